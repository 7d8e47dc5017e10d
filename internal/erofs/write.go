package erofs

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"syscall"
)

// On-disk format (the kernel's fs/erofs/erofs_fs.h).
const (
	blkBits     = 9
	blkSize     = 1 << blkBits
	superOffset = 1024
	superMagic  = 0xE0F5E1E2
	slotOffset  = superOffset + 128 // the device table, after the 128-byte superblock
	slotSize    = 128
	metaStart   = slotOffset + slotSize // the first inode (the root)

	incompatChunkedFile = 0x4
	incompatDeviceTable = 0x8

	layoutFlatPlain  = 0
	layoutFlatInline = 2
	layoutChunkBased = 4

	chunkFormatIndexes = 0x20

	inodeSize   = 64 // extended inodes only
	direntSize  = 12
	xattrHeader = 12
)

// EROFS dirent file types.
const (
	ftRegFile = 1 + iota
	ftDir
	ftChrdev
	ftBlkdev
	ftFifo
	ftSock
	ftSymlink
)

func fileType(mode uint32) uint8 {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return ftRegFile
	case syscall.S_IFDIR:
		return ftDir
	case syscall.S_IFCHR:
		return ftChrdev
	case syscall.S_IFBLK:
		return ftBlkdev
	case syscall.S_IFIFO:
		return ftFifo
	case syscall.S_IFSOCK:
		return ftSock
	case syscall.S_IFLNK:
		return ftSymlink
	}
	return 0
}

// dirent is one name of a directory in the image.
type dirent struct {
	name string
	n    *inode
}

// entries returns a directory's names with "." and "..", sorted as EROFS
// wants them (bytewise, so lookups can binary-search).
func (n *inode) entries(parent *inode) []dirent {
	ents := make([]dirent, 0, len(n.children)+2)
	ents = append(ents, dirent{".", n}, dirent{"..", parent})
	for name, c := range n.children {
		ents = append(ents, dirent{name, c})
	}
	slices.SortFunc(ents, func(a, b dirent) int {
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	return ents
}

// dirBlocks splits sorted entries into directory blocks: each block holds
// dirents followed by their names, and no name crosses a block.
func dirBlocks(ents []dirent) [][]dirent {
	var blocks [][]dirent
	for len(ents) > 0 {
		used, i := 0, 0
		for i < len(ents) && used+direntSize+len(ents[i].name) <= blkSize {
			used += direntSize + len(ents[i].name)
			i++
		}
		blocks = append(blocks, ents[:i])
		ents = ents[i:]
	}
	return blocks
}

// dirSize is a directory's i_size: full blocks but the last, which ends
// with its last name.
func dirSize(blocks [][]dirent) int64 {
	last := blocks[len(blocks)-1]
	used := 0
	for _, e := range last {
		used += direntSize + len(e.name)
	}
	return int64(len(blocks)-1)*blkSize + int64(used)
}

// xattrBody returns the inline xattr area of n (header and entries), nil for
// none.
func (n *inode) xattrBody() []byte {
	if len(n.xattrs) == 0 {
		return nil
	}
	names := make([]string, 0, len(n.xattrs))
	for k := range n.xattrs {
		names = append(names, k)
	}
	slices.Sort(names)
	b := make([]byte, xattrHeader)
	for _, k := range names {
		idx, suffix, _ := xattrIndex(k)
		v := n.xattrs[k]
		b = append(b, uint8(len(suffix)), idx)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
		b = append(b, suffix...)
		b = append(b, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// chunkBits is the chunk size (in blocks, as a shift) of a regular file: the
// smallest that covers the whole file with one chunk, at most 2^31 blocks.
func chunkBits(size int64) uint {
	blocks := uint64(size+blkSize-1) >> blkBits
	if blocks <= 1 {
		return 0
	}
	return min(uint(bits.Len64(blocks-1)), 31)
}

// recordSize is the bytes n takes in the metadata area: the inode, its xattrs
// and (regular files) its chunk indexes, 8-byte aligned after the xattrs.
func (n *inode) recordSize(xattrLen int) int64 {
	sz := int64(inodeSize + xattrLen)
	if n.datalayout == layoutFlatInline {
		sz += n.size
	}
	if n.datalayout == layoutChunkBased {
		cb := chunkBits(n.size) + blkBits
		chunks := (n.size + 1<<cb - 1) >> cb
		sz = (sz+7)&^7 + 8*chunks
	}
	return sz
}

// layout is the image's shape: the inodes in metadata order, and where data
// blocks start.
type layout struct {
	order   []*inode
	parents map[*inode]*inode // directories: their parent
	xattrs  map[*inode][]byte
	blocks  uint32 // total image blocks
}

func (t *tree) layout() (*layout, error) {
	l := &layout{parents: map[*inode]*inode{t.root: t.root}, xattrs: map[*inode][]byte{}}
	// Number the inodes, root first, depth first in name order; count links.
	seen := map[*inode]bool{}
	var walk func(d *inode)
	walk = func(d *inode) {
		seen[d] = true
		l.order = append(l.order, d)
		d.nlink = 2
		for _, e := range d.entries(l.parents[d])[2:] {
			c := e.n
			if c.isDir() {
				d.nlink++
				l.parents[c] = d
				walk(c)
				continue
			}
			if !seen[c] {
				seen[c] = true
				c.nlink = 0
				l.order = append(l.order, c)
			}
			c.nlink++
		}
	}
	walk(t.root)
	pos := int64(metaStart)
	for _, n := range l.order {
		x := n.xattrBody()
		if len(x) > 0 && (len(x)-xattrHeader)/4+1 > 65535 {
			return nil, fmt.Errorf("too many xattrs on one file: %w", errors.ErrUnsupported)
		}
		l.xattrs[n] = x
		n.datalayout = layoutFlatPlain
		switch n.mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			if n.size > 0 {
				n.datalayout = layoutChunkBased
				if (n.off>>blkBits)+(n.size>>blkBits) >= 1<<32 {
					return nil, fmt.Errorf("file data beyond 2 TiB into the tar: %w", errors.ErrUnsupported)
				}
			}
		case syscall.S_IFDIR, syscall.S_IFLNK:
			if n.isDir() {
				n.size = dirSize(dirBlocks(n.entries(l.parents[n])))
			} else {
				n.size = int64(len(n.target))
			}
			// Data that fits one block with its inode follows the inode
			// (the kernel wants the inline part within one block).
			if head := int64(inodeSize + len(x)); head+n.size <= blkSize {
				n.datalayout = layoutFlatInline
				if (pos+head)%blkSize+n.size > blkSize {
					pos = (pos + blkSize - 1) &^ (blkSize - 1)
				}
			}
		}
		n.nid = uint64(pos / 32)
		pos += (n.recordSize(len(x)) + 31) &^ 31
	}
	if t.root.nid >= 1<<16 {
		return nil, fmt.Errorf("root nid %d does not fit 16 bits", t.root.nid) // cannot happen: the root is first
	}
	blk := (pos + blkSize - 1) >> blkBits
	for _, n := range l.order {
		if (n.isDir() || n.mode&syscall.S_IFMT == syscall.S_IFLNK) && n.datalayout == layoutFlatPlain {
			n.blk = uint32(blk)
			blk += (n.size + blkSize - 1) >> blkBits
			if blk >= 1<<32 {
				return nil, fmt.Errorf("image larger than 2 TiB: %w", errors.ErrUnsupported)
			}
		}
	}
	l.blocks = uint32(blk)
	return l, nil
}

// data returns the content of a directory (its dirent blocks) or symlink.
func (l *layout) data(n *inode) []byte {
	if !n.isDir() {
		return []byte(n.target)
	}
	le := binary.LittleEndian
	var out []byte
	for _, b := range dirBlocks(n.entries(l.parents[n])) {
		out = append(out, make([]byte, -len(out)&(blkSize-1))...) // blocks but the last are full
		blk := make([]byte, blkSize)
		nameoff := direntSize * len(b)
		for i, e := range b {
			d := blk[i*direntSize:]
			le.PutUint64(d[0:], e.n.nid)
			le.PutUint16(d[8:], uint16(nameoff))
			d[10] = fileType(e.n.mode)
			nameoff += copy(blk[nameoff:], e.name)
		}
		out = append(out, blk[:nameoff]...)
	}
	return out
}

// write writes the image of t, whose tar (device 1) is tarSize bytes long.
func (t *tree) write(w io.Writer, tarSize int64) error {
	l, err := t.layout()
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 256<<10)
	var pos int64
	pad := func(to int64) {
		for ; pos < to; pos++ {
			bw.WriteByte(0)
		}
	}
	put := func(b []byte) {
		bw.Write(b)
		pos += int64(len(b))
	}
	le := binary.LittleEndian

	// Superblock.
	pad(superOffset)
	sb := make([]byte, 128)
	le.PutUint32(sb[0:], superMagic)
	sb[12] = blkBits
	le.PutUint16(sb[14:], uint16(t.root.nid))
	le.PutUint64(sb[16:], uint64(len(l.order)))
	le.PutUint32(sb[36:], l.blocks)
	// meta_blkaddr and xattr_blkaddr 0: nids count from the image's start.
	copy(sb[64:80], "lbuild-tar-index")
	le.PutUint32(sb[80:], incompatChunkedFile|incompatDeviceTable)
	le.PutUint16(sb[86:], 1)                   // extra_devices
	le.PutUint16(sb[88:], slotOffset/slotSize) // devt_slotoff
	put(sb)

	// Device 1: the tar. Its tag stays empty, so a mount without device=
	// fails instead of looking for a file named by the tag.
	slot := make([]byte, slotSize)
	le.PutUint32(slot[64:], uint32((tarSize+blkSize-1)>>blkBits))
	le.PutUint16(slot[72:], uint16((tarSize+blkSize-1)>>(blkBits+32)))
	put(slot)

	ino := make([]byte, inodeSize)
	for i, n := range l.order {
		pad(int64(n.nid) * 32)
		clear(ino)
		x := l.xattrs[n]
		le.PutUint16(ino[0:], 1|uint16(n.datalayout)<<1) // extended
		if len(x) > 0 {
			le.PutUint16(ino[2:], uint16((len(x)-xattrHeader)/4+1))
		}
		le.PutUint16(ino[4:], uint16(n.mode))
		le.PutUint64(ino[8:], uint64(n.size))
		var cb uint
		switch {
		case n.datalayout == layoutChunkBased:
			cb = chunkBits(n.size)
			le.PutUint16(ino[16:], chunkFormatIndexes|uint16(cb))
		case n.datalayout == layoutFlatPlain && (n.isDir() || n.mode&syscall.S_IFMT == syscall.S_IFLNK):
			le.PutUint32(ino[16:], n.blk)
		case n.mode&syscall.S_IFMT == syscall.S_IFCHR || n.mode&syscall.S_IFMT == syscall.S_IFBLK:
			le.PutUint32(ino[16:], n.rdev)
		}
		le.PutUint32(ino[20:], uint32(i+1))
		le.PutUint32(ino[24:], n.uid)
		le.PutUint32(ino[28:], n.gid)
		le.PutUint64(ino[32:], uint64(n.mtime))
		le.PutUint32(ino[40:], n.nsec)
		le.PutUint32(ino[44:], n.nlink)
		put(ino)
		put(x)
		if n.datalayout == layoutFlatInline {
			put(l.data(n))
		}
		if n.datalayout == layoutChunkBased {
			pad((pos + 7) &^ 7)
			chunk := int64(blkSize) << cb
			var idx [8]byte
			for o := int64(0); o < n.size; o += chunk {
				b := uint64(n.off+o) >> blkBits
				le.PutUint16(idx[0:], uint16(b>>32))
				le.PutUint16(idx[2:], 1) // device_id: the tar
				le.PutUint32(idx[4:], uint32(b))
				put(idx[:])
			}
		}
	}

	for _, n := range l.order {
		if n.datalayout == layoutFlatPlain && (n.isDir() || n.mode&syscall.S_IFMT == syscall.S_IFLNK) {
			pad(int64(n.blk) << blkBits)
			put(l.data(n))
		}
	}
	pad(int64(l.blocks) << blkBits)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write erofs image: %w", err)
	}
	return nil
}
