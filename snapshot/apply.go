package snapshot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/internal/compression"
)

// ErrUnsafePath is returned (wrapped) by Apply for a tar entry whose name or
// hard link target is absolute or contains "..". Entries that would be written
// through a symlink leading outside the layer fail too (with an os.Root error).
var ErrUnsafePath = errors.New("unsafe path in layer")

// cleanName turns a tar entry name into a clean relative path ("." for the
// root), rejecting absolute paths and "..".
func cleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("tar entry %q: absolute path: %w", name, ErrUnsafePath)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("tar entry %q: %w", name, ErrUnsafePath)
		}
	}
	n := path.Clean(name)
	if n == "" {
		n = "."
	}
	return n, nil
}

// applier unpacks a layer tar below an os.Root. Every path is resolved through
// the root, so nothing is created outside it; the final component is then
// handled with *at syscalls on the parent's fd, never following it.
type applier struct {
	root  *os.Root
	merge bool

	pname string   // the directory pdir refers to
	pdir  *os.File // cached parent directory

	dirs    []dirTime       // directory mtimes, set at the end
	created map[string]bool // merge: paths this layer made
	buf     []byte

	raw     *compression.Counter // the tar stream
	written int64                // file content written so far

	// Untar (ADD) mode: names are files like any other (no whiteouts),
	// devices are skipped, the root entry is ignored, owners may be forced.
	literal  bool
	owner    *[2]int
	maxBytes int64 // bound on file content written (0: the layer bound)
}

// A layer's files may hold at most max(minApplyExpansion, maxApplyRatio ×
// the tar stream read so far). Only a sparse entry makes content outgrow its
// tar (Go's tar reader fills its holes): a few bytes could otherwise write
// terabytes of zeros.
const (
	maxApplyRatio     = 100
	minApplyExpansion = 1 << 30 // 1 GiB
)

// applyExpansionFloor is minApplyExpansion; tests lower it.
var applyExpansionFloor int64 = minApplyExpansion

// ErrTooLarge is returned (wrapped) by Apply for a layer whose files expand
// beyond their bound.
var ErrTooLarge = errors.New("refusing a likely decompression bomb")

// contentReader reads one entry's content, counting it against the bound.
type contentReader struct {
	a *applier
	r io.Reader
}

func (c contentReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.a.written += int64(n)
	limit := max(applyExpansionFloor, maxApplyRatio*c.a.raw.N)
	if c.a.maxBytes > 0 {
		limit = c.a.maxBytes
	}
	if c.a.written > limit {
		return 0, fmt.Errorf("layer files expand to more than %d bytes (the bound is %dx the tar, at least %d bytes; a sparse file?): %w",
			limit, maxApplyRatio, applyExpansionFloor, ErrTooLarge)
	}
	return n, err
}

type dirTime struct {
	name         string
	atime, mtime unix.Timespec
}

// applyTar unpacks the layer tar r into dir. With merge false it builds a
// layer in overlay form: ".wh.x" becomes a 0/0 char device x and
// ".wh..wh..opq" the opaque xattr on its directory. With merge true it applies
// the layer onto a full tree (copy driver): whiteouts delete, and an opaque
// marker deletes what lower layers put in its directory.
func applyTar(ctx context.Context, dir string, r io.Reader, merge bool) error {
	return untar(ctx, dir, r, &applier{merge: merge})
}

// UntarOpt configures Untar.
type UntarOpt func(*applier)

// WithOwner makes every extracted entry owned by uid:gid (ADD --chown).
func WithOwner(uid, gid int) UntarOpt { return func(a *applier) { a.owner = &[2]int{uid, gid} } }

// WithMaxBytes bounds the file content Untar writes; past it Untar fails
// with an error wrapping ErrTooLarge.
func WithMaxBytes(n int64) UntarOpt { return func(a *applier) { a.maxBytes = n } }

// Untar extracts the plain tar r into the existing directory dir as ADD
// extracts a local archive: with the same applier that unpacks layers (so
// nothing lands outside dir: names and links resolve inside it, a final
// symlink is never followed), but with no whiteout meaning (".wh." names
// are files), devices and fifos skipped and dir's own metadata kept. Later
// entries replace earlier ones, as GNU tar and docker do.
func Untar(ctx context.Context, dir string, r io.Reader, opts ...UntarOpt) error {
	a := &applier{literal: true}
	for _, o := range opts {
		o(a)
	}
	return untar(ctx, dir, r, a)
}

func untar(ctx context.Context, dir string, r io.Reader, a *applier) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	a.root, a.created, a.buf, a.raw = root, map[string]bool{}, make([]byte, 128<<10), &compression.Counter{R: r}
	defer a.closeParent()
	tr := tar.NewReader(a.raw)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		if err := a.entry(hdr, tr); err != nil {
			return err
		}
	}
	return a.finishDirs()
}

func (a *applier) closeParent() {
	if a.pdir != nil {
		a.pdir.Close()
		a.pdir, a.pname = nil, ""
	}
}

// parent returns an fd of directory dir (relative to the root), creating it
// and its missing parents.
func (a *applier) parent(dir string) (int, error) {
	if a.pdir != nil && a.pname == dir {
		return int(a.pdir.Fd()), nil
	}
	a.closeParent()
	if dir != "." {
		if err := a.root.MkdirAll(dir, 0o755); err != nil {
			return -1, err
		}
	}
	f, err := a.root.Open(dir)
	if err != nil {
		return -1, err
	}
	a.pdir, a.pname = f, dir
	return int(f.Fd()), nil
}

// removeAll removes name and all below it, forgetting the directory times
// recorded for them: a later entry may replace a directory with a file
// (GNU tar and docker keep the last entry), and its times are its own.
func (a *applier) removeAll(name string) error {
	a.closeParent()
	kept := a.dirs[:0]
	for _, d := range a.dirs {
		if name != "." && d.name != name && !strings.HasPrefix(d.name, name+"/") {
			kept = append(kept, d)
		}
	}
	a.dirs = kept
	return a.root.RemoveAll(name)
}

func (a *applier) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	dir, base := path.Dir(name), path.Base(name)
	if a.literal {
		if name == "." {
			return nil // ADD leaves its destination directory as it is
		}
		if err := a.create(name, dir, base, hdr, r); err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		return nil
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		if base == opaqueMarker {
			err = a.opaque(dir)
		} else if target := strings.TrimPrefix(base, whiteoutPrefix); target == "" || target == "." || target == ".." {
			err = fmt.Errorf("bad whiteout: %w", ErrUnsafePath)
		} else {
			err = a.whiteout(dir, target)
		}
		if err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		return nil
	}
	if name == "." {
		return a.rootEntry(hdr)
	}
	if err := a.create(name, dir, base, hdr, r); err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	return nil
}

func (a *applier) create(name, dir, base string, hdr *tar.Header, r io.Reader) error {
	pfd, err := a.parent(dir)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	isDir := false
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		isDir = st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !isDir || hdr.Typeflag != tar.TypeDir {
			if isDir {
				if err := a.removeAll(name); err != nil {
					return err
				}
				if pfd, err = a.parent(dir); err != nil {
					return err
				}
				isDir = false
			} else if err := unix.Unlinkat(pfd, base, 0); err != nil {
				return fmt.Errorf("remove: %w", err)
			}
		}
	}
	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !isDir {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
	case tar.TypeReg, tar.TypeRegA:
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		f := os.NewFile(uintptr(fd), name)
		_, err = io.CopyBuffer(f, contentReader{a: a, r: r}, a.buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target: %w", err)
		}
		t, err := a.root.Open(path.Dir(target))
		if err != nil {
			return fmt.Errorf("hard link target: %w", err)
		}
		err = unix.Linkat(int(t.Fd()), path.Base(target), pfd, base, 0)
		t.Close()
		if err != nil {
			return fmt.Errorf("hard link to %s: %w", target, err)
		}
		if a.merge {
			a.created[name] = true
		}
		return nil // the inode's metadata came with its first name
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if a.literal {
			logrus.Debugf("snapshot: not extracting device or fifo %q", hdr.Name)
			return nil
		}
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, kind|0o600, int(dev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
	default:
		logrus.Debugf("snapshot: skipping tar entry %q of type %q", hdr.Name, hdr.Typeflag)
		return nil
	}
	if a.merge {
		a.created[name] = true
	}
	uid, gid := hdr.Uid, hdr.Gid
	if a.owner != nil {
		uid, gid = a.owner[0], a.owner[1]
	}
	if err := unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lchown: %w", err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(pfd, base, mode, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := setXattrs("/proc/self/fd/"+strconv.Itoa(pfd)+"/"+base, hdr, hdr.Typeflag == tar.TypeSymlink); err != nil {
		return err
	}
	ts := times(hdr)
	if hdr.Typeflag == tar.TypeDir {
		a.dirs = append(a.dirs, dirTime{name: name, atime: ts[0], mtime: ts[1]})
		return nil
	}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func times(hdr *tar.Header) []unix.Timespec {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	return []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
}

// setXattrs sets the xattrs of hdr on p (not following a final symlink).
// trusted.overlay.* from the tar is ignored: only the layer's own whiteout
// markers may make overlay metadata.
func setXattrs(p string, hdr *tar.Header, symlink bool) error {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok || strings.HasPrefix(name, overlayXattr) {
			continue
		}
		err := unix.Lsetxattr(p, name, []byte(v), 0)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.ENOTSUP) || (symlink && errors.Is(err, unix.EPERM)) {
			logrus.Debugf("snapshot: cannot set xattr %s on %s: %v", name, hdr.Name, err)
			continue
		}
		return fmt.Errorf("set xattr %s: %w", name, err)
	}
	return nil
}

// rootEntry applies the metadata of a "./" entry to the root directory.
func (a *applier) rootEntry(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("tar entry %q: root is not a directory", hdr.Name)
	}
	fd, err := a.parent(".")
	if err != nil {
		return err
	}
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("lchown root: %w", err)
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode)&0o7777); err != nil {
		return fmt.Errorf("chmod root: %w", err)
	}
	if err := setXattrs("/proc/self/fd/"+strconv.Itoa(fd)+"/.", hdr, false); err != nil {
		return err
	}
	ts := times(hdr)
	a.dirs = append(a.dirs, dirTime{name: ".", atime: ts[0], mtime: ts[1]})
	return nil
}

// whiteout records that target in dir is deleted by this layer.
func (a *applier) whiteout(dir, target string) error {
	name := path.Join(dir, target)
	if a.merge {
		if a.created[name] {
			return nil
		}
		return a.removeAll(name)
	}
	if err := a.removeAll(name); err != nil {
		return err
	}
	pfd, err := a.parent(dir)
	if err != nil {
		return err
	}
	if err := unix.Mknodat(pfd, target, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("whiteout %s: %w", name, err)
	}
	return nil
}

// opaque records that dir hides what lower layers have in it.
func (a *applier) opaque(dir string) error {
	fd, err := a.parent(dir)
	if err != nil {
		return err
	}
	if !a.merge {
		if err := unix.Fsetxattr(fd, opaqueXattr, []byte("y"), 0); err != nil {
			return fmt.Errorf("opaque %s: %w", dir, err)
		}
		return nil
	}
	f, err := a.root.Open(dir)
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	for _, n := range names {
		child := path.Join(dir, n)
		if !a.created[child] {
			if err := a.removeAll(child); err != nil {
				return err
			}
		}
	}
	return nil
}

// finishDirs sets directory times, children before parents; when a
// directory has several entries, the last one wins.
func (a *applier) finishDirs() error {
	a.closeParent()
	done := map[string]bool{}
	for i := len(a.dirs) - 1; i >= 0; i-- {
		d := a.dirs[i]
		if done[d.name] {
			continue
		}
		done[d.name] = true
		f, err := a.root.Open(d.name)
		if err != nil {
			return fmt.Errorf("set times %s: %w", d.name, err)
		}
		err = unix.UtimesNanoAt(int(f.Fd()), ".", []unix.Timespec{d.atime, d.mtime}, 0)
		f.Close()
		if err != nil {
			return fmt.Errorf("set times %s: %w", d.name, err)
		}
	}
	return nil
}
