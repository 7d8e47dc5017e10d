package erofs

import (
	"archive/tar"
	"errors"
	"fmt"
	"path"
	"strings"
	"syscall"
	"time"
)

// Layer tar conventions, as snapshot's applier reads them.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	overlayXattr   = "trusted.overlay."
	opaqueXattr    = "trusted.overlay.opaque"
	paxXattr       = "SCHILY.xattr."
)

// inode is one file of the image; hard links share it.
type inode struct {
	mode       uint32 // S_IF* | permission bits
	uid, gid   uint32
	mtime      int64
	nsec       uint32
	size       int64  // regular files: content bytes
	off        int64  // regular files: where the content starts in the tar
	target     string // symlinks
	rdev       uint32 // devices, as the kernel's new_encode_dev
	xattrs     map[string]string
	children   map[string]*inode // directories
	nlink      uint32
	nid        uint64
	blk        uint32 // directories and symlinks: first data block in the image
	datalayout uint8
}

func (n *inode) isDir() bool { return n.mode&syscall.S_IFMT == syscall.S_IFDIR }

// tree is the layer in overlay form, built entry by entry as snapshot's
// applier unpacks it (later entries replace earlier ones).
type tree struct {
	root *inode
	now  time.Time // the time the applier would give what it makes itself
}

func newTree(now time.Time) *tree {
	t := &tree{now: now}
	t.root = t.implicitDir()
	return t
}

// implicitDir is a directory the applier makes on its own (a missing parent,
// or the layer's root): 0755, root-owned, with the time of the unpack.
func (t *tree) implicitDir() *inode {
	return &inode{mode: syscall.S_IFDIR | 0o755, mtime: t.now.Unix(), nsec: uint32(t.now.Nanosecond()), children: map[string]*inode{}}
}

// unsupported wraps ErrUnsupported: an entry whose unpacked form this package
// does not mirror (the caller unpacks the tar instead).
func unsupported(hdr *tar.Header, format string, a ...any) error {
	return fmt.Errorf("tar entry %q: %s: %w", hdr.Name, fmt.Sprintf(format, a...), errors.ErrUnsupported)
}

// cleanName turns a tar entry name into a clean relative path ("." for the
// root); ok is false for absolute paths and "..", which the applier refuses.
func cleanName(name string) (string, bool) {
	if strings.HasPrefix(name, "/") {
		return "", false
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", false
		}
	}
	return path.Clean(name), true
}

// dir returns directory p, creating it and missing parents (implicitly) when
// create is set; nil when it does not exist. A path through a symlink or a
// non-directory is unsupported (the applier follows symlinks inside the root,
// or fails).
func (t *tree) dir(hdr *tar.Header, p string, create bool) (*inode, error) {
	d := t.root
	if p == "." {
		return d, nil
	}
	for _, c := range strings.Split(p, "/") {
		if len(c) > 255 {
			return nil, unsupported(hdr, "name longer than 255 bytes")
		}
		n := d.children[c]
		switch {
		case n == nil && !create:
			return nil, nil
		case n == nil:
			n = t.implicitDir()
			d.children[c] = n
		case !n.isDir():
			return nil, unsupported(hdr, "path through a non-directory %q", c)
		}
		d = n
	}
	return d, nil
}

// add applies one tar entry whose content (for regular files) starts at off
// in the tar.
func (t *tree) add(hdr *tar.Header, off int64) error {
	name, ok := cleanName(hdr.Name)
	if !ok {
		return unsupported(hdr, "unsafe path")
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	if hdr.Typeflag == tar.TypeGNUSparse {
		return unsupported(hdr, "sparse file")
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return unsupported(hdr, "sparse file")
		}
	}
	dir, base := path.Dir(name), path.Base(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		if base == opaqueMarker {
			d, err := t.dir(hdr, dir, true)
			if err != nil {
				return err
			}
			d.xattrs = withXattr(d.xattrs, opaqueXattr, "y")
			return nil
		}
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target == "" || target == "." || target == ".." {
			return unsupported(hdr, "bad whiteout")
		}
		if len(target) > 255 {
			return unsupported(hdr, "name longer than 255 bytes")
		}
		// The applier removes what is there, then makes the 0/0 device
		// (mode 0, root's, with the time of the unpack).
		if err := t.remove(hdr, path.Join(dir, target)); err != nil {
			return err
		}
		d, err := t.dir(hdr, dir, true)
		if err != nil {
			return err
		}
		d.children[target] = &inode{mode: syscall.S_IFCHR, mtime: t.now.Unix(), nsec: uint32(t.now.Nanosecond())}
		return nil
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return unsupported(hdr, "root is not a directory")
		}
		return t.meta(hdr, t.root)
	}
	if len(base) > 255 {
		return unsupported(hdr, "name longer than 255 bytes")
	}
	d, err := t.dir(hdr, dir, true)
	if err != nil {
		return err
	}
	old := d.children[base]
	if old != nil && old.isDir() && hdr.Typeflag == tar.TypeDir {
		return t.meta(hdr, old) // the directory stays, with its children
	}
	delete(d.children, base)
	var n *inode
	switch hdr.Typeflag {
	case tar.TypeDir:
		n = &inode{mode: syscall.S_IFDIR, children: map[string]*inode{}}
	case tar.TypeReg:
		n = &inode{mode: syscall.S_IFREG, size: hdr.Size, off: off}
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) >= 4096 {
			return unsupported(hdr, "symlink target empty or too long") // symlinkat fails
		}
		n = &inode{mode: syscall.S_IFLNK | 0o777, target: hdr.Linkname}
	case tar.TypeLink:
		target, ok := cleanName(hdr.Linkname)
		if !ok || target == "." {
			return unsupported(hdr, "bad hard link target %q", hdr.Linkname)
		}
		td, err := t.dir(hdr, path.Dir(target), false)
		if err != nil {
			return err
		}
		var tn *inode
		if td != nil {
			tn = td.children[path.Base(target)]
		}
		if tn == nil || tn.isDir() {
			return unsupported(hdr, "hard link target %q is missing or a directory", hdr.Linkname)
		}
		d.children[base] = tn // its metadata came with its first name
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: syscall.S_IFCHR, tar.TypeBlock: syscall.S_IFBLK, tar.TypeFifo: syscall.S_IFIFO}[hdr.Typeflag]
		if hdr.Devmajor < 0 || hdr.Devmajor >= 1<<12 || hdr.Devminor < 0 || hdr.Devminor >= 1<<20 {
			return unsupported(hdr, "device number out of range")
		}
		maj, min := uint32(hdr.Devmajor), uint32(hdr.Devminor)
		n = &inode{mode: kind, rdev: min&0xff | maj<<8 | (min&^0xff)<<12}
	default:
		return nil // skipped by the applier, after it removed what was there
	}
	if err := t.meta(hdr, n); err != nil {
		return err
	}
	d.children[base] = n
	return nil
}

// meta sets owner, mode, xattrs and mtime from hdr on n (xattrs add to what
// n has, as setxattr does on a directory the tar names twice).
func (t *tree) meta(hdr *tar.Header, n *inode) error {
	if hdr.Uid < 0 || int64(hdr.Uid) > 1<<32-1 || hdr.Gid < 0 || int64(hdr.Gid) > 1<<32-1 {
		return unsupported(hdr, "uid or gid out of range")
	}
	n.uid, n.gid = uint32(hdr.Uid), uint32(hdr.Gid)
	if n.mode&syscall.S_IFMT != syscall.S_IFLNK {
		n.mode = n.mode&syscall.S_IFMT | uint32(hdr.Mode)&0o7777
	}
	n.mtime, n.nsec = hdr.ModTime.Unix(), uint32(hdr.ModTime.Nanosecond())
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok || strings.HasPrefix(name, overlayXattr) {
			continue
		}
		if _, _, known := xattrIndex(name); !known {
			if strings.HasPrefix(name, "system.") || strings.HasPrefix(name, "security.") ||
				strings.HasPrefix(name, "trusted.") || strings.HasPrefix(name, "user.") {
				return unsupported(hdr, "xattr %q", name)
			}
			continue // the kernel refuses it (EOPNOTSUPP), the applier skips it
		}
		if strings.HasPrefix(name, "user.") {
			switch n.mode & syscall.S_IFMT {
			case syscall.S_IFLNK:
				continue // EPERM on a symlink: the applier skips it
			case syscall.S_IFREG, syscall.S_IFDIR:
			default:
				return unsupported(hdr, "user xattr on a device") // the applier fails
			}
		}
		if len(v) > 65535 {
			return unsupported(hdr, "xattr %q too large", name)
		}
		n.xattrs = withXattr(n.xattrs, name, v)
	}
	return nil
}

func withXattr(m map[string]string, k, v string) map[string]string {
	if m == nil {
		m = map[string]string{}
	}
	m[k] = v
	return m
}

// remove drops p (and all below it) if it exists.
func (t *tree) remove(hdr *tar.Header, p string) error {
	d, err := t.dir(hdr, path.Dir(p), false)
	if err != nil || d == nil {
		return err
	}
	delete(d.children, path.Base(p))
	return nil
}

// xattrIndex splits an xattr name into EROFS's name index and suffix.
func xattrIndex(name string) (uint8, string, bool) {
	for _, p := range []struct {
		index  uint8
		prefix string
	}{{1, "user."}, {4, "trusted."}, {6, "security."}} {
		if s, ok := strings.CutPrefix(name, p.prefix); ok && s != "" && len(s) <= 255 {
			return p.index, s, true
		}
	}
	return 0, "", false
}
