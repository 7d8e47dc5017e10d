package builder

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// openArchive returns a tar reader if the file at p is a tar archive, plain
// or compressed with gzip, bzip2, xz or zstd; nil if it is not an archive.
// p is a source selectSources checked, so a symlink there is not followed.
func openArchive(p string) (*tar.Reader, io.Closer, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	head, _ := br.Peek(6)
	var r io.Reader = br
	closer := io.Closer(f)
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, nil
		}
		r = zr
	case bytes.HasPrefix(head, []byte("BZh")):
		r = bzip2.NewReader(br)
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		xr, err := xz.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, nil
		}
		r = xr
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, nil
		}
		r = zr
		closer = multiCloser{f, closeFunc(zr.Close)}
	}
	if r != io.Reader(br) {
		limit := int64(minArchiveExpansion)
		if fi, err := f.Stat(); err == nil {
			limit = expansionLimit(fi.Size())
		}
		r = &expansionGuard{r: r, name: p, limit: limit}
	}
	// A tar archive has "ustar" at offset 257 of its first block.
	bb := bufio.NewReaderSize(r, 64<<10)
	block, err := bb.Peek(512)
	if err != nil || !bytes.HasPrefix(block[257:], []byte("ustar")) {
		closer.Close()
		return nil, nil, nil
	}
	return tar.NewReader(bb), closer, nil
}

// ADD of a local archive extracts at most
// max(minArchiveExpansion, maxArchiveRatio × the archive's size): past that
// the build fails, as the archive is likely a decompression bomb. Both the
// decompressed stream and the file contents written (a sparse entry expands
// too) are bounded.
const (
	maxArchiveRatio     = 100
	minArchiveExpansion = 1 << 30 // 1 GiB
)

// archiveExpansionFloor is minArchiveExpansion; tests lower it.
var archiveExpansionFloor int64 = minArchiveExpansion

func expansionLimit(size int64) int64 {
	return max(archiveExpansionFloor, maxArchiveRatio*size)
}

// errArchiveTooLarge is wrapped by the error of an archive over its bound.
var errArchiveTooLarge = errors.New("refusing a likely decompression bomb")

// expansionGuard reads r, failing once more than limit bytes came through.
type expansionGuard struct {
	r     io.Reader
	name  string // the archive, for the error
	limit int64
	n     int64
	err   error // set once the bound is passed
}

func (g *expansionGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err // sticky, whatever buffers above us do
	}
	n, err := g.r.Read(p)
	g.n += int64(n)
	if g.n > g.limit {
		g.err = fmt.Errorf("archive %s expands to more than %d bytes (the bound is %dx its size, at least %d bytes): %w; if it is genuine, COPY it and unpack it in a RUN step",
			g.name, g.limit, maxArchiveRatio, archiveExpansionFloor, errArchiveTooLarge)
		return 0, g.err
	}
	return n, err
}

type closeFunc func()

func (c closeFunc) Close() error { c(); return nil }

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	for _, c := range m {
		c.Close()
	}
	return nil
}

// extractArchive unpacks the archive at src into dest inside root, as ADD
// does. It reports false (and changes nothing) when src is not an archive.
// Entries cannot leave root: names and link targets resolve inside it.
func extractArchive(root, dest, src string, uid, gid uint32, chown bool) (bool, error) {
	tr, closer, err := openArchive(src)
	if err != nil || tr == nil {
		return false, err
	}
	defer closer.Close()
	limit := int64(minArchiveExpansion)
	if fi, err := os.Stat(src); err == nil {
		limit = expansionLimit(fi.Size())
	}
	content := &expansionGuard{r: tr, name: src, limit: limit}
	if err := mkdirAll(root, dest, uid, gid, chown); err != nil {
		return true, err
	}
	type dirTime struct {
		p string
		h *tar.Header
	}
	var dirs []dirTime
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, errArchiveTooLarge) {
			return true, err
		}
		if err != nil {
			return true, fmt.Errorf("read archive: %w", err)
		}
		name := path.Clean("/" + h.Name)
		if name == "/" {
			continue
		}
		target := path.Join(dest, name)
		if err := mkdirAll(root, path.Dir(target), 0, 0, false); err != nil {
			return true, err
		}
		p, err := securejoin.SecureJoin(root, target)
		if err != nil {
			return true, err
		}
		u, g := h.Uid, h.Gid
		if chown {
			u, g = int(uid), int(gid)
		}
		mode := os.FileMode(h.Mode & 0o777)
		if h.Mode&0o4000 != 0 {
			mode |= os.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			mode |= os.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := os.Lstat(p); err == nil && !fi.IsDir() {
				os.Remove(p)
			}
			if err := os.Mkdir(p, mode); err != nil && !os.IsExist(err) {
				return true, err
			}
			dirs = append(dirs, dirTime{p, h})
		case tar.TypeReg, tar.TypeRegA:
			if err := removeNonDir(p); err != nil {
				return true, err
			}
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return true, err
			}
			_, err = io.Copy(f, content)
			f.Close()
			if err != nil {
				return true, err
			}
		case tar.TypeSymlink:
			if err := removeNonDir(p); err != nil {
				return true, err
			}
			if err := os.Symlink(h.Linkname, p); err != nil {
				return true, err
			}
			if err := os.Lchown(p, u, g); err != nil {
				return true, err
			}
			continue
		case tar.TypeLink:
			old, err := securejoin.SecureJoin(root, path.Join(dest, path.Clean("/"+h.Linkname)))
			if err != nil {
				return true, err
			}
			if err := removeNonDir(p); err != nil {
				return true, err
			}
			if err := os.Link(old, p); err != nil {
				return true, err
			}
			continue
		default:
			continue // devices and fifos are not extracted by ADD here
		}
		if err := os.Lchown(p, u, g); err != nil {
			return true, err
		}
		if err := os.Chmod(p, mode); err != nil {
			return true, err
		}
		if h.Typeflag != tar.TypeDir {
			os.Chtimes(p, h.ModTime, h.ModTime)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Chtimes(dirs[i].p, dirs[i].h.ModTime, dirs[i].h.ModTime)
	}
	return true, nil
}
