package builder

import (
	"bytes"
	"fmt"
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
	src, mnt := dirAndTmpfs(t)
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

// Between filesystems copy_file_range cannot join, copyFd copies whole
// files with sendfile (nothing remembered against it), and whole files by
// read and write where sendfile was given up for the pair.
func TestCopyFdAcrossFilesystems(t *testing.T) {
	src, mnt := dirAndTmpfs(t)
	data := []byte(strings.Repeat("lbuild sends this file\n", 50000)) // 1.1 MB: more than one buffer
	for name, d := range map[string][]byte{"big": data, "empty": nil} {
		if err := os.WriteFile(filepath.Join(src, name), d, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pair := devPair{src: devOf(t, src), dst: devOf(t, mnt)}
	noKernelCopy.Delete(pair)
	noSendfile.Delete(pair)
	t.Cleanup(func() { noSendfile.Delete(pair) })
	for _, sendfile := range []bool{true, false} {
		if !sendfile {
			noSendfile.Store(pair, struct{}{})
		}
		for _, name := range []string{"big", "empty"} {
			from, to := filepath.Join(src, name), filepath.Join(mnt, fmt.Sprintf("%s-%v", name, sendfile))
			in, err := unix.Open(from, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			out, err := unix.Open(to, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(from)
			err = copyFd(out, in, pair, fi.Size(), from, to)
			unix.Close(in)
			unix.Close(out)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(from)
			if got, _ := os.ReadFile(to); !bytes.Equal(got, want) {
				t.Errorf("%s (sendfile %v): copied %d bytes, want %d", name, sendfile, len(got), len(want))
			}
		}
		if _, ok := noSendfile.Load(pair); sendfile && ok {
			t.Error("sendfile between the two filesystems was given up")
		}
	}
}

// dirAndTmpfs returns a temp dir and a tmpfs mounted for the test: two
// filesystems (it skips where it cannot mount one, or the temp dir is a
// tmpfs already).
func dirAndTmpfs(t *testing.T) (string, string) {
	t.Helper()
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
	return src, mnt
}
