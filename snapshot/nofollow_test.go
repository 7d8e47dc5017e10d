package snapshot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNodeOpen checks the lookups below a tree, with openat2 and one
// component at a time as on kernels without it: no symlink is followed on
// the way, one as the last component is opened itself.
func TestNodeOpen(t *testing.T) {
	dir := t.TempDir()
	check(t, os.MkdirAll(filepath.Join(dir, "a/b"), 0o755))
	mustWrite(t, filepath.Join(dir, "a/b/c"), "c", 0o644)
	check(t, os.Symlink("/etc", filepath.Join(dir, "a/l")))
	for _, without := range []bool{false, true} {
		noOpenat2.Store(without)
		root, err := openTree(dir)
		check(t, err)
		n, err := root.open("a/b/c")
		if err != nil || n.st.Mode&unix.S_IFMT != unix.S_IFREG || n.rel != "a/b/c" {
			t.Errorf("without openat2 %v: a/b/c: %v", without, err)
		} else {
			n.close()
		}
		if n, err := root.open("a/l"); err != nil || n.st.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Errorf("without openat2 %v: a/l is not opened as the symlink: %v", without, err)
		} else {
			if target, err := n.readlink(); err != nil || target != "/etc" {
				t.Errorf("readlink a/l = %q, %v", target, err)
			}
			n.close()
		}
		if _, err := root.open("a/l/passwd"); !errors.Is(err, unix.ELOOP) {
			t.Errorf("without openat2 %v: a/l/passwd: %v, want ELOOP", without, err)
		}
		if _, err := root.open("a/b/c/x"); !errors.Is(err, unix.ENOTDIR) {
			t.Errorf("without openat2 %v: a/b/c/x: %v, want ENOTDIR", without, err)
		}
		if _, err := root.open("a/nothing"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("without openat2 %v: a/nothing: %v, want not exist", without, err)
		}
		root.close()
	}
	noOpenat2.Store(false)
}
