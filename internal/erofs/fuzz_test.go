package erofs_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/lbuild/lbuild/internal/erofs"
)

// FuzzBuild: Build of any bytes (a layer from outside is indexed when it is
// used: ApplyBlob) never panics, and an image it does build mounts, and
// every entry in it can be read: the kernel never refuses what Build wrote.
func FuzzBuild(f *testing.F) {
	seeds := [][]entry{
		{dir("a/", 0o755), file("a/f", 0o644, []byte("hello")), special(tar.TypeSymlink, "a/l", "f"), special(tar.TypeLink, "a/h", "a/f")},
		{dir("d/", 0o755), file("d/.wh.gone", 0o644, nil), file("d/.wh..wh..opq", 0o644, nil), file(".wh.x", 0o644, nil)},
		{file("x", 0o644, bytes.Repeat([]byte("0123456789"), 100)), dir("x/", 0o700), file("x/y", 0o4755, []byte("2"))},
		{withXattrs(file("c", 0o644, []byte("c")), "user.a", "b", "security.capability", "\x01\x00\x00\x02"), special(tar.TypeFifo, "p", ""), special(tar.TypeChar, "dev/null", "")},
	}
	tmp := f.TempDir()
	for i, s := range seeds {
		p := filepath.Join(tmp, "seed"+string(rune('0'+i)))
		writeTar(f, p, s)
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	canMount := os.Geteuid() == 0 && erofs.Supported(f.TempDir())
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		img := filepath.Join(dir, "img")
		out, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		bw := bufio.NewWriter(out)
		err = erofs.Build(bw, bytes.NewReader(data))
		if err == nil {
			err = bw.Flush()
		}
		out.Close()
		if err != nil {
			return
		}
		// Metadata only: never more than the tar it indexes (a tar entry
		// takes 512 bytes at least, an inode 64) and a little.
		if fi, err := os.Stat(img); err != nil || fi.Size() > int64(len(data))+64<<10 {
			t.Fatalf("a %d-byte tar gave a %v-byte image (%v)", len(data), fi.Size(), err)
		}
		if !canMount {
			return
		}
		tarPath := filepath.Join(dir, "tar")
		if err := os.WriteFile(tarPath, data, 0o644); err != nil {
			t.Fatal(err)
		}
		mnt := filepath.Join(dir, "mnt")
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := erofs.Mount(img, tarPath, mnt); err != nil {
			t.Fatalf("an image Build wrote does not mount: %v", err)
		}
		defer erofs.Unmount(mnt)
		err = filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if _, err := os.Lstat(p); err != nil {
				return err
			}
			if d.Type().IsRegular() {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.Copy(io.Discard, f)
				return err
			}
			if d.Type()&fs.ModeSymlink != 0 {
				_, err = os.Readlink(p)
			}
			return err
		})
		if err != nil {
			t.Fatalf("reading the mounted image: %v", err)
		}
	})
}
