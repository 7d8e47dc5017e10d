package fsx

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TreeSize counts the files below root once and does not cross into a
// filesystem mounted under it (a container's overlay under the store root).
func TestTreeSizeStaysOnItsFilesystem(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "a"), make([]byte, 1000), 0o644)
	mnt := filepath.Join(root, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	os.WriteFile(filepath.Join(mnt, "b"), make([]byte, 5000), 0o644)
	if n := TreeSize(root); n != 1000 {
		t.Errorf("TreeSize = %d, want 1000 (the mounted tmpfs left out)", n)
	}
	if n := TreeSize(mnt); n != 5000 {
		t.Errorf("TreeSize of the mount itself = %d, want 5000", n)
	}
}

func TestWriteFileAndLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := WriteFile(p, "", []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, "", []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Errorf("content %q", b)
	}
	l, err := Lock(p+".lock", unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(p+".lock", unix.LOCK_EX|unix.LOCK_NB); err != ErrLocked {
		t.Errorf("second exclusive lock: %v, want ErrLocked", err)
	}
	if !Held(p + ".lock") {
		t.Error("Held = false while locked")
	}
	l.Close()
	if Held(p + ".lock") {
		t.Error("Held = true after release")
	}
}

// WriteFileVolatile replaces a file whole, with its mode, and leaves no
// temp file.
func TestWriteFileVolatile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, c := range []string{"one", "two, longer"} {
		if err := WriteFileVolatile(p, "", []byte(c), 0o640); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != c {
			t.Errorf("content %q, want %q", b, c)
		}
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("files left: %v", ents)
	}
	if err := WriteFileVolatile(filepath.Join(dir, "no", "such"), "", nil, 0o600); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}

// A file with two names is counted once.
func TestTreeSizeCountsHardLinksOnce(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "a"), make([]byte, 3000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "a"), filepath.Join(root, "b")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "c"), make([]byte, 10), 0o644)
	if n := TreeSize(root); n != 3010 {
		t.Errorf("TreeSize = %d, want 3010", n)
	}
}
