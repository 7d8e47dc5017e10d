package snapshot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Trees that a running container can change (its upperdir, its copy-driver
// tree) are read through nodes: every name is looked up relative to the
// descriptor of its directory and no symlink is ever followed, so that a
// directory swapped for a symlink to a host path ("/", "/etc") while the tree
// is read cannot take the reader out of the tree (the class of docker's
// CVE-2018-15664). A directory that is renamed away meanwhile is still read
// through its descriptor: what is read is always the container's own data.

// node is a file opened without following symlinks: an O_PATH descriptor,
// which pins the inode whatever happens to its name afterwards, and its
// stat taken from that descriptor.
type node struct {
	fd  int
	rel string // the path inside the tree read, for errors ("" for its root)
	st  unix.Statx_t
}

// openTree opens the directory dir, the root of a tree to read. dir itself
// is a path of lbuild's own, not the container's.
func openTree(dir string) (*node, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	n := &node{fd: fd}
	if err := n.stat(); err != nil {
		n.close()
		return nil, err
	}
	return n, nil
}

// noOpenat2 records that the kernel has no openat2 (before Linux 5.6).
var noOpenat2 atomic.Bool

// open opens rel (one or more components, as readdir gave them: no "." or
// "..") below directory n without following any symlink on the way; a
// symlink as the last component is opened itself, one before it is ELOOP.
func (n *node) open(rel string) (*node, error) {
	fd, err := openNoFollow(n.fd, rel)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: joinRel(n.rel, rel), Err: err}
	}
	c := &node{fd: fd, rel: joinRel(n.rel, rel)}
	if err := c.stat(); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func openNoFollow(dirfd int, rel string) (int, error) {
	const flags = unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
			Flags:   flags,
			Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		if !errors.Is(err, unix.ENOSYS) {
			return fd, err
		}
		noOpenat2.Store(true)
	}
	// Old kernels: one component at a time, each with O_NOFOLLOW.
	parts := strings.Split(rel, "/")
	fd := dirfd
	for i, p := range parts {
		if p == "" || p == "." || p == ".." {
			if fd != dirfd {
				unix.Close(fd)
			}
			return -1, unix.EINVAL
		}
		next, err := unix.Openat(fd, p, flags, 0)
		if fd != dirfd {
			unix.Close(fd)
		}
		if err != nil {
			return -1, err
		}
		fd = next
		if i < len(parts)-1 {
			var st unix.Statx_t
			if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &st); err != nil {
				unix.Close(fd)
				return -1, err
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
			case unix.S_IFLNK:
				unix.Close(fd)
				return -1, unix.ELOOP
			default:
				unix.Close(fd)
				return -1, unix.ENOTDIR
			}
		}
	}
	return fd, nil
}

func (n *node) stat() error {
	err := unix.Statx(n.fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &n.st)
	if err != nil {
		return &fs.PathError{Op: "statx", Path: n.rel, Err: err}
	}
	return nil
}

func (n *node) close() { unix.Close(n.fd) }

func (n *node) isDir() bool { return n.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// proc names n's own inode through procfs, for the calls that have no
// descriptor form for an O_PATH descriptor (xattrs, reopening to read). The
// calls given it must follow symlinks: they follow this magic link to n's
// inode and no further, even when n is a symlink.
func (n *node) proc() string { return "/proc/self/fd/" + strconv.Itoa(n.fd) }

// names returns the names in directory n, sorted.
func (n *node) names() ([]string, error) {
	fd, err := unix.Openat(n.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: n.rel, Err: err}
	}
	f := os.NewFile(uintptr(fd), n.rel)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// readlink returns the target of symlink n.
func (n *node) readlink() (string, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		k, err := unix.Readlinkat(n.fd, "", buf)
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: n.rel, Err: err}
		}
		if k < size {
			return string(buf[:k]), nil
		}
	}
}

// openFile opens regular file n for reading. It reopens n's own inode, so a
// name swapped meanwhile for something else (a device, a fifo) is not opened.
func (n *node) openFile() (*os.File, error) {
	f, err := os.OpenFile(n.proc(), os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: n.rel, Err: errors.Unwrap(err)}
	}
	return f, nil
}

// xattrs returns n's extended attributes.
func (n *node) xattrs() (map[string][]byte, error) {
	a, err := listXattrs(n.proc(), true)
	if err != nil {
		return nil, fmt.Errorf("xattrs of %s: %w", n.rel, err)
	}
	return a, nil
}

// xattr returns n's extended attribute name.
func (n *node) xattr(name string) ([]byte, error) {
	v, err := xattrValue(n.proc(), name, true)
	if err != nil {
		return nil, fmt.Errorf("xattr %s of %s: %w", name, n.rel, err)
	}
	return v, nil
}

// removeXattr removes n's extended attribute name; an absent one is no error.
func (n *node) removeXattr(name string) error {
	if err := unix.Removexattr(n.proc(), name); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove xattr %s of %s: %w", name, n.rel, err)
	}
	return nil
}

// nodeTree is a set of trees opened once, as the lower layers of an upperdir.
type nodeTree []*node

func openTrees(dirs []string) (nodeTree, error) {
	var t nodeTree
	for _, d := range dirs {
		n, err := openTree(d)
		if err != nil {
			t.close()
			return nil, err
		}
		t = append(t, n)
	}
	return t, nil
}

func (t nodeTree) close() {
	for _, n := range t {
		n.close()
	}
}
