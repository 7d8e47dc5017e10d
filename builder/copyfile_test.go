package builder

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// devOf returns the st_dev of path.
func devOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev
}

// copyTo copies src into a new file dst with copyContents.
func copyTo(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := copyContents(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// Between two filesystems copy_file_range cannot join (a tmpfs and the
// temp dir's), the failure is remembered for the pair and the files are
// still copied whole; within one filesystem the kernel copies and nothing
// is remembered.
func TestCopyContentsRemembersKernelCopyFailure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	src := t.TempDir()
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=64m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	if devOf(t, src) == devOf(t, mnt) {
		t.Skip("the temp dir is a tmpfs")
	}
	data := []byte(strings.Repeat("lbuild copies this file\n", 50000)) // 1.2 MB: more than one buffer
	for i, name := range []string{"a", "b", "empty"} {
		d := data[:len(data)/(i+1)]
		if name == "empty" {
			d = nil
		}
		if err := os.WriteFile(filepath.Join(src, name), d, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pair := devPair{src: devOf(t, src), dst: devOf(t, mnt)}
	noKernelCopy.Delete(pair)
	for _, name := range []string{"a", "b", "empty"} {
		copyTo(t, filepath.Join(src, name), filepath.Join(mnt, name))
		want, _ := os.ReadFile(filepath.Join(src, name))
		if got, _ := os.ReadFile(filepath.Join(mnt, name)); !bytes.Equal(got, want) {
			t.Errorf("%s: copied %d bytes, want %d", name, len(got), len(want))
		}
	}
	if _, ok := noKernelCopy.Load(pair); !ok {
		t.Error("the failed kernel copy between the two filesystems is not remembered")
	}

	same := devPair{src: pair.src, dst: pair.src}
	noKernelCopy.Delete(same)
	copyTo(t, filepath.Join(src, "a"), filepath.Join(src, "a2"))
	if got, _ := os.ReadFile(filepath.Join(src, "a2")); !bytes.Equal(got, data) {
		t.Errorf("same filesystem: copied %d bytes, want %d", len(got), len(data))
	}
	if _, ok := noKernelCopy.Load(same); ok {
		t.Error("copy_file_range within one filesystem was given up")
	}
}
