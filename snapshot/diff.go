package snapshot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	overlayXattr   = "trusted.overlay."
	opaqueXattr    = "trusted.overlay.opaque"
	paxXattr       = "SCHILY.xattr."
)

// markerTime is the mtime of whiteout and opaque entries, which have no file of
// their own to take one from; a constant keeps layers reproducible.
var markerTime = time.Unix(0, 0)

// lstatx stats p without following a final symlink.
func lstatx(p string, st *unix.Statx_t) error {
	err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, st)
	if err != nil {
		return &fs.PathError{Op: "statx", Path: p, Err: err}
	}
	return nil
}

func isWhiteout(st *unix.Statx_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev_major == 0 && st.Rdev_minor == 0
}

// readDirNames returns the names in dir, sorted.
func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// readXattrs returns the extended attributes of p (not following symlinks).
func readXattrs(p string) (map[string][]byte, error) {
	a, err := listXattrs(p, false)
	if err != nil {
		return nil, fmt.Errorf("xattrs of %s: %w", p, err)
	}
	return a, nil
}

// listXattrs returns the extended attributes of p, following a final
// symlink if follow.
func listXattrs(p string, follow bool) (map[string][]byte, error) {
	list := unix.Llistxattr
	if follow {
		list = unix.Listxattr
	}
	buf := make([]byte, 256)
	var n int
	var err error
	for {
		n, err = list(p, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		break
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	if n == 0 {
		return nil, nil
	}
	attrs := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v, err := xattrValue(p, name, follow)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", name, err)
		}
		attrs[name] = v
	}
	return attrs, nil
}

func getXattr(p, name string) ([]byte, error) {
	v, err := xattrValue(p, name, false)
	if err != nil {
		return nil, fmt.Errorf("get xattr %s %s: %w", p, name, err)
	}
	return v, nil
}

// xattrValue returns the extended attribute name of p, following a final
// symlink if follow.
func xattrValue(p, name string, follow bool) ([]byte, error) {
	get := unix.Lgetxattr
	if follow {
		get = unix.Getxattr
	}
	buf := make([]byte, 128)
	for {
		n, err := get(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// tarWriter writes layer entries from files on disk.
type tarWriter struct {
	tw    *tar.Writer
	links map[[3]uint64]string // (dev major, dev minor, inode) -> first path
	buf   []byte
	strip bool // remove trusted.overlay.* other than opaque from the files read
	// lowers are the layer dirs below an upperdir (top first), to leave out
	// directories that were copied up but not changed.
	lowers nodeTree
	// noData writes regular files with size 0 and no content (Changes
	// only needs the names).
	noData bool
	// clamp, unless zero, is the latest mtime an entry is written with
	// (WithSourceDateEpoch); with strip, the file on disk gets it too.
	clamp time.Time
	// root is the directory the tree is read from (for strip's clamping,
	// which writes to lbuild's own upperdir only).
	root string
}

func newTarWriter(w io.Writer, strip bool) *tarWriter {
	return &tarWriter{tw: tar.NewWriter(w), links: map[[3]uint64]string{}, buf: make([]byte, 128<<10), strip: strip}
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// entry writes the file n under the name rel. It reports whether a
// directory carries the overlay opaque xattr.
func (w *tarWriter) entry(rel string, n *node) (opaque bool, err error) {
	st := &n.st
	mtime, err := w.mtime(rel, st)
	if err != nil {
		return false, err
	}
	// No Uname/Gname, AccessTime or ChangeTime: the header says what the
	// layer holds, nothing of the host it was made on. Go's writer picks
	// USTAR unless a field needs PAX (long names, xattrs).
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: mtime,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		if !w.noData {
			hdr.Size = int64(st.Size)
		}
		if st.Nlink > 1 {
			k := [3]uint64{uint64(st.Dev_major), uint64(st.Dev_minor), st.Ino}
			if first, ok := w.links[k]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
			} else {
				w.links[k] = rel
			}
		}
	case unix.S_IFLNK:
		hdr.Typeflag = tar.TypeSymlink
		if hdr.Linkname, err = n.readlink(); err != nil {
			return false, err
		}
	case unix.S_IFCHR:
		hdr.Typeflag = tar.TypeChar
		hdr.Devmajor, hdr.Devminor = int64(st.Rdev_major), int64(st.Rdev_minor)
	case unix.S_IFBLK:
		hdr.Typeflag = tar.TypeBlock
		hdr.Devmajor, hdr.Devminor = int64(st.Rdev_major), int64(st.Rdev_minor)
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		return false, nil // sockets cannot be archived
	}
	attrs, err := n.xattrs()
	if err != nil {
		return false, err
	}
	for k, v := range attrs {
		if strings.HasPrefix(k, overlayXattr) {
			if k == opaqueXattr {
				opaque = hdr.Typeflag == tar.TypeDir && string(v) == "y"
			} else if w.strip {
				if err := n.removeXattr(k); err != nil {
					return false, err
				}
			}
			continue
		}
		if hdr.Typeflag == tar.TypeLink {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords[paxXattr+k] = string(v)
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return false, fmt.Errorf("write tar header %s: %w", rel, err)
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		f, err := n.openFile()
		if err != nil {
			return false, err
		}
		k, err := io.CopyBuffer(w.tw, io.LimitReader(f, hdr.Size), w.buf)
		f.Close()
		if err != nil {
			return false, fmt.Errorf("write %s: %w", rel, err)
		}
		if k != hdr.Size {
			return false, fmt.Errorf("write %s: file shrank during diff", rel)
		}
	}
	return opaque, nil
}

// mtime is the time the entry rel is written with: its mtime, or the clamp
// time if that is earlier. With strip (the writer owns the upperdir that
// becomes the layer: no container runs on it) a clamped file gets the clamp
// time on disk too.
func (w *tarWriter) mtime(rel string, st *unix.Statx_t) (time.Time, error) {
	t := time.Unix(st.Mtime.Sec, int64(st.Mtime.Nsec))
	if w.clamp.IsZero() || !t.After(w.clamp) {
		return t, nil
	}
	if w.strip && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		abs := filepath.Join(w.root, filepath.FromSlash(rel))
		ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(w.clamp.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, abs, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return t, fmt.Errorf("clamp mtime of %s: %w", rel, err)
		}
	}
	return w.clamp, nil
}

// whiteout writes the entry deleting name in directory dir.
func (w *tarWriter) whiteout(dir, name string) error {
	return w.marker(joinRel(dir, whiteoutPrefix+name))
}

// opaque writes the entry hiding everything below dir in lower layers.
func (w *tarWriter) opaque(dir string) error {
	return w.marker(joinRel(dir, opaqueMarker))
}

func (w *tarWriter) marker(name string) error {
	err := w.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, ModTime: markerTime})
	if err != nil {
		return fmt.Errorf("write tar header %s: %w", name, err)
	}
	return nil
}

// writeUpperTar writes the overlay-form directory root (an upperdir or a
// committed layer) as a layer tar to out. With strip, it also removes the
// overlay bookkeeping xattrs from the files it reads.
//
// lowers (top first) are the directories the upperdir was mounted over. A
// directory that overlay copied up only because something inside it was
// touched and then restored (a runtime's mount-point stub, a file created and
// deleted) is left out: with nothing below it in the layer and the same
// mode, owner, mtime and xattrs as in the lower layers, it is no change.
func writeUpperTar(ctx context.Context, root string, out io.Writer, strip bool, lowers ...string) error {
	return writeUpperTarOpts(ctx, root, out, strip, false, lowers...)
}

// writeUpperTarOpts is writeUpperTar; with noData regular files are written
// without content.
//
// root is read without following any symlink in it (see node): it may be the
// upperdir of a running container.
func writeUpperTarOpts(ctx context.Context, root string, out io.Writer, strip, noData bool, lowers ...string) error {
	lt, err := openTrees(lowers)
	if err != nil {
		return err
	}
	defer lt.close()
	w := newTarWriter(out, strip)
	w.noData, w.lowers = noData, lt
	return w.writeUpper(ctx, root)
}

// writeUpper writes the overlay-form directory root (over w.lowers, which
// the caller opened and closes) as a layer tar and closes the tar.
func (w *tarWriter) writeUpper(ctx context.Context, root string) error {
	w.root = root
	rn, err := openTree(root)
	if err != nil {
		return err
	}
	defer rn.close()
	if err := w.walkUpper(ctx, rn); err != nil {
		return err
	}
	if err := w.tw.Close(); err != nil {
		return fmt.Errorf("close tar: %w", err)
	}
	return nil
}

// walkUpper writes what is below directory dir.
func (w *tarWriter) walkUpper(ctx context.Context, dir *node) error {
	names, err := dir.names()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := w.walkUpperEntry(ctx, dir, name); err != nil {
			return err
		}
	}
	return nil
}

// walkUpperEntry writes the entry name of directory dir and, for a
// directory, what is below it.
func (w *tarWriter) walkUpperEntry(ctx context.Context, dir *node, name string) error {
	n, err := dir.open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // removed since the directory was read
	}
	if err != nil {
		return err
	}
	defer n.close()
	if isWhiteout(&n.st) {
		return w.whiteout(dir.rel, name)
	}
	if n.isDir() && len(w.lowers) > 0 {
		unchanged, err := w.unchangedDir(n)
		if err != nil || unchanged {
			return err
		}
	}
	opaque, err := w.entry(n.rel, n)
	if err != nil || !n.isDir() {
		return err
	}
	if opaque {
		if err := w.opaque(n.rel); err != nil {
			return err
		}
	}
	return w.walkUpper(ctx, n)
}

// unchangedDir reports whether the upper directory n holds nothing but
// unchanged directories and equals the same directory of the topmost lower
// layer that has it.
func (w *tarWriter) unchangedDir(n *node) (bool, error) {
	names, err := n.names()
	if err != nil {
		return false, err
	}
	for _, name := range names {
		c, err := n.open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the directory was read
		}
		if err != nil {
			return false, err
		}
		same := false
		if c.isDir() {
			same, err = w.unchangedDir(c)
		}
		c.close()
		if err != nil || !same {
			return false, err
		}
	}
	if o, err := n.xattr(opaqueXattr); err == nil && string(o) == "y" {
		return false, nil
	}
	for _, l := range w.lowers {
		ln, err := l.open(n.rel)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			continue
		}
		if errors.Is(err, unix.ELOOP) {
			return false, nil // a symlink on the way: not this directory
		}
		if err != nil {
			return false, err
		}
		same, err := w.sameDir(n, ln)
		ln.close()
		if err == nil && same {
			// What the layer leaves out must read as the lower one in a
			// view of it too.
			_, err = w.mtime(n.rel, &n.st)
		}
		return same, err
	}
	return false, nil
}

// sameDir reports whether the upper directory u has the mode, owner, mtime
// and xattrs of l. The mtime compared is the one the layer would hold
// (clamped): so a second pass over an upperdir whose times the first one
// clamped on disk (Freeze, then Diff) decides as the first did.
func (w *tarWriter) sameDir(u, l *node) (bool, error) {
	us, ls := &u.st, &l.st
	if ls.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, nil // a whiteout or a file: the dir is new here
	}
	um := time.Unix(us.Mtime.Sec, int64(us.Mtime.Nsec))
	if !w.clamp.IsZero() && um.After(w.clamp) {
		um = w.clamp
	}
	if ls.Mode != us.Mode || ls.Uid != us.Uid || ls.Gid != us.Gid ||
		!um.Equal(time.Unix(ls.Mtime.Sec, int64(ls.Mtime.Nsec))) {
		return false, nil
	}
	ua, err := u.xattrs()
	if err != nil {
		return false, err
	}
	la, err := l.xattrs()
	if err != nil {
		return false, err
	}
	return sameXattrs(ua, la), nil
}

// sameXattrs compares xattrs leaving out overlay's bookkeeping.
func sameXattrs(a, b map[string][]byte) bool {
	n := 0
	for k, v := range a {
		if strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		n++
		if bv, ok := b[k]; !ok || string(bv) != string(v) {
			return false
		}
	}
	for k := range b {
		if !strings.HasPrefix(k, "trusted.overlay.") {
			n--
		}
	}
	return n == 0
}

// stripOverlayXattrs removes overlay bookkeeping xattrs (all trusted.overlay.*
// but opaque) below root, so that an upperdir can serve as a layer.
func stripOverlayXattrs(ctx context.Context, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		attrs, err := readXattrs(p)
		if err != nil {
			return err
		}
		for k := range attrs {
			if strings.HasPrefix(k, overlayXattr) && k != opaqueXattr {
				if err := unix.Lremovexattr(p, k); err != nil && !errors.Is(err, unix.ENODATA) {
					return fmt.Errorf("remove xattr %s %s: %w", p, k, err)
				}
			}
		}
		return nil
	})
}
