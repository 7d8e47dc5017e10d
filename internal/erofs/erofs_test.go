package erofs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/internal/erofs"
	"github.com/lbuild/lbuild/internal/tartest"
	"github.com/lbuild/lbuild/snapshot"
)

// needErofs skips the test unless this kernel and process can mount images.
func needErofs(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("erofs mounts need root")
	}
	if !erofs.Supported(t.TempDir()) {
		t.Skipf("erofs tar index images do not mount here: %v", erofs.ProbeError())
	}
}

// entry is one tar entry; content is written for regular files.
type entry struct {
	hdr     tar.Header
	content []byte
}

func writeTar(t testing.TB, path string, entries []entry) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.content))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.content); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

var (
	t0 = time.Date(2020, 1, 2, 3, 4, 5, 123456789, time.UTC)
	t1 = time.Date(2021, 6, 7, 8, 9, 10, 987654321, time.UTC)
)

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: t0, Format: tar.FormatPAX}}
}

func file(name string, mode int64, content []byte) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: t1, Uid: 1000, Gid: 1001, Format: tar.FormatPAX}, content: content}
}

func special(typ byte, name string, target string) entry {
	return entry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o644, ModTime: t0, Format: tar.FormatPAX}}
}

func withXattrs(e entry, kv ...string) entry {
	e.hdr.PAXRecords = map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		e.hdr.PAXRecords["SCHILY.xattr."+kv[i]] = kv[i+1]
	}
	return e
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// layerEntries covers every kind of entry the applier handles.
func layerEntries() []entry {
	long := strings.Repeat("l", 200)
	deep := strings.Repeat("deep/", 40)
	es := []entry{
		withXattrs(dir("./", 0o750), "user.root", "r"),
		entry{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "hi"}}},
		dir("etc/", 0o755),
		file("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n")),
		file("etc/.wh.passwd", 0o644, nil),
		file("gone/sub/.wh.x", 0o644, nil), // whiteout in missing parents
		file("opq/.wh..wh..opq", 0o644, nil),
		file("opq/keep", 0o600, []byte("kept")),
		withXattrs(dir("fakeopq/", 0o755), "trusted.overlay.opaque", "y", "trusted.other", "t"),
		file("sizes/0", 0o644, nil),
		file("sizes/1", 0o644, randBytes(1, 1)),
		file("sizes/511", 0o644, randBytes(2, 511)),
		file("sizes/512", 0o644, randBytes(3, 512)),
		file("sizes/513", 0o644, randBytes(4, 513)),
		file("sizes/60M", 0o644, randBytes(5, 60<<20)),
		withXattrs(file("x/caps", 0o755, []byte("#!/bin/sh\n")),
			"security.capability", "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"user.mime", "text/x-sh", "user.empty", ""),
		withXattrs(special(tar.TypeSymlink, "x/link-user-xattr", "caps"), "user.dropped", "on a symlink", "trusted.kept", "k"),
		withXattrs(dir("x/tdir/", 0o700), "trusted.t", strings.Repeat("v", 3000), "user.u", "1"),
		special(tar.TypeSymlink, "links/rel", "../etc/hosts"),
		special(tar.TypeSymlink, "links/abs", "/etc/hosts"),
		special(tar.TypeSymlink, "links/long", strings.Repeat("t/", 400)),
		special(tar.TypeSymlink, "links/dangling", "nowhere"),
		file("hl/a", 0o640, []byte("first inode")),
		special(tar.TypeLink, "hl/b", "hl/a"),
		special(tar.TypeLink, "hl/c", "hl/b"),
		file("hl/a", 0o644, []byte("second inode")), // b and c keep the first
		special(tar.TypeLink, "hl/ln-to-link", "links/rel"),
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: t0, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/blk", Mode: 0o660, Devmajor: 259, Devminor: 300000, Gid: 6, ModTime: t0, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o600, ModTime: t1, Format: tar.FormatPAX}},
		file("modes/suid", 0o4755, []byte("s")),
		file("modes/sgid", 0o2711, []byte("g")),
		dir("modes/sticky/", 0o1777),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "owners/big", Mode: 0o600, Uid: 100000, Gid: 4000000000, ModTime: t1, Format: tar.FormatPAX}},
		file("rep/x", 0o644, []byte("old")),
		file("rep/x", 0o600, []byte("new content")),
		dir("rep/d/", 0o755),
		file("rep/d/child", 0o644, []byte("c")),
		file("rep/d", 0o644, []byte("a file now")),
		file("rep/f", 0o644, []byte("a file first")),
		dir("rep/f/", 0o711),
		file("rep/skipped", 0o644, []byte("removed by an entry the applier skips")),
		{hdr: tar.Header{Typeflag: tar.TypeCont, Name: "rep/skipped", Mode: 0o644, ModTime: t0, Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeCont, Name: "skipped/in/missing/dirs", Mode: 0o644, ModTime: t0, Format: tar.FormatPAX}},
		file("rep/wh", 0o644, []byte("whited out later")),
		file("rep/.wh.wh", 0o644, nil),
		file("rep/.wh.back", 0o644, nil),
		file("rep/back", 0o644, []byte("back again")),
		dir("twice/", 0o700),
		withXattrs(dir("twice/", 0o755), "user.second", "2"),
		file(long+"/"+long, 0o644, []byte("long names")),
		file(deep+"leaf", 0o644, []byte("deep")),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "gnu-long/" + long, Mode: 0o644, ModTime: time.Unix(1600000000, 0), Format: tar.FormatGNU}, content: []byte("gnu")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "ustar", Mode: 0o644, ModTime: time.Unix(1600000000, 0), Format: tar.FormatUSTAR}, content: randBytes(6, 1000)},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "old/1960", Mode: 0o644, ModTime: time.Date(1960, 5, 6, 7, 8, 9, 500, time.UTC), Format: tar.FormatPAX}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "old/epoch", Mode: 0o644, ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR}},
		dir("many/", 0o755),
	}
	for i := range 10000 {
		es = append(es, file(fmt.Sprintf("many/file-with-a-longer-name-%05d", i), 0o644, []byte(fmt.Sprint(i))))
	}
	es = append(es, file("many/.wh.file-with-a-longer-name-00007", 0o644, nil))
	return es
}

// snapshotTree records every entry below root (as the comparison sees it),
// by path relative to root. Times the applier or Build took from the clock
// (after since) read "now".
func snapshotTree(t *testing.T, root string, since time.Time) map[string]string {
	t.Helper()
	out := map[string]string{}
	links := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		mtime := fmt.Sprint(time.Unix(st.Mtim.Unix()).UTC().Format(time.RFC3339Nano))
		if !time.Unix(st.Mtim.Unix()).Before(since) {
			mtime = "now"
		}
		rec := fmt.Sprintf("mode=%#o uid=%d gid=%d mtime=%s", st.Mode, st.Uid, st.Gid, mtime)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			rec += fmt.Sprintf(" size=%d sha256=%s", st.Size, hex.EncodeToString(sum[:8]))
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			rec += fmt.Sprintf(" size=%d target=%q", st.Size, target)
		case unix.S_IFCHR, unix.S_IFBLK:
			rec += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		rec += fmt.Sprintf(" nlink=%d", st.Nlink)
		if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
			links[st.Ino] = append(links[st.Ino], rel)
		}
		rec += " xattrs=" + xattrs(t, p)
		out[rel] = rec
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, names := range links {
		slices.Sort(names)
		for _, n := range names {
			out[n] += fmt.Sprintf(" links=%v", names)
		}
	}
	return out
}

func xattrs(t *testing.T, p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var kv []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		kv = append(kv, fmt.Sprintf("%s=%q", name, v[:m]))
	}
	slices.Sort(kv)
	return "[" + strings.Join(kv, " ") + "]"
}

// applied unpacks the tar at path with snapshot's applier (overlay form)
// and returns the directory it made.
func applied(t *testing.T, tarPath string) string {
	t.Helper()
	b, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	name := snapshot.ChainID("", "sha256:"+hex.EncodeToString(sum[:]))
	s, err := snapshot.New(t.TempDir(), snapshot.DriverCopy)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(context.Background(), name, "", bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	dirs, err := s.LowerDirs(name)
	if err != nil {
		t.Fatal(err)
	}
	return dirs[0]
}

// mounted builds the image of the tar at tarPath from src and mounts it,
// unmounting at the test's end.
func mounted(t *testing.T, tarPath string, src io.Reader) string {
	t.Helper()
	tmp := t.TempDir()
	img, mnt := filepath.Join(tmp, "layer.erofs"), filepath.Join(tmp, "mnt")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := erofs.Build(f, src); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := erofs.Mount(img, tarPath, mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := erofs.Unmount(mnt); err != nil {
			t.Error(err)
		}
	})
	return mnt
}

func compareTrees(t *testing.T, want, got map[string]string) {
	t.Helper()
	bad := 0
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s: missing from the image (applier: %s)", p, w)
			bad++
		} else if g != w {
			t.Errorf("%s:\n image:   %s\n applier: %s", p, g, w)
			bad++
		}
		if bad > 20 {
			t.Fatal("too many differences")
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: only in the image: %s", p, g)
		}
	}
}

// TestMatchesApplier builds and mounts the image of a tar holding every kind
// of entry and compares every file with what snapshot's applier unpacks.
func TestMatchesApplier(t *testing.T) {
	needErofs(t)
	since := time.Now().Add(-time.Second)
	tarPath := filepath.Join(t.TempDir(), "layer.tar")
	writeTar(t, tarPath, layerEntries())
	want := snapshotTree(t, applied(t, tarPath), since)
	for _, tc := range []struct {
		name string
		open func(f *os.File) io.Reader
	}{
		{"seeker", func(f *os.File) io.Reader { return f }},
		{"stream", func(f *os.File) io.Reader { return struct{ io.Reader }{f} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Open(tarPath)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := snapshotTree(t, mounted(t, tarPath, tc.open(f)), since)
			compareTrees(t, want, got)
			for _, p := range []string{"opq", "hl/b", "many/file-with-a-longer-name-00007", "sizes/60M", "twice", "skipped/in/missing"} {
				if want[p] == "" {
					t.Errorf("the applier made no %s: the test tar lost its point", p)
				}
			}
		})
	}
}

// TestOverlayLower stacks the image as an overlay lowerdir over a base
// layer: whiteouts delete, opaque directories hide the base's children.
func TestOverlayLower(t *testing.T) {
	needErofs(t)
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	for _, p := range []string{"etc/passwd", "opq/old", "gone/sub/x", "gone/sub/y", "fakeopq/base", "many/file-with-a-longer-name-00007", "kept/base"} {
		if err := os.MkdirAll(filepath.Join(base, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(base, p), []byte("base"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tarPath := filepath.Join(tmp, "layer.tar")
	writeTar(t, tarPath, []entry{
		file("etc/.wh.passwd", 0o644, nil),
		file("etc/hosts", 0o644, []byte("hosts")),
		file("opq/.wh..wh..opq", 0o644, nil),
		file("opq/keep", 0o644, []byte("keep")),
		file("gone/sub/.wh.x", 0o644, nil),
		withXattrs(dir("fakeopq/", 0o755), "trusted.overlay.opaque", "y"),
		file("many/.wh.file-with-a-longer-name-00007", 0o644, nil),
	})
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lower := mounted(t, tarPath, f)
	mnt := filepath.Join(tmp, "merged")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, "lowerdir="+lower+":"+base); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer unix.Unmount(mnt, 0)
	for p, want := range map[string]bool{
		"etc/passwd": false, "etc/hosts": true, "opq/old": false, "opq/keep": true,
		"gone/sub/x": false, "gone/sub/y": true, "fakeopq/base": true,
		"many/file-with-a-longer-name-00007": false, "kept/base": true,
	} {
		_, err := os.Lstat(filepath.Join(mnt, p))
		if got := err == nil; got != want {
			t.Errorf("%s: present=%v in the overlay, want %v (%v)", p, got, want, err)
		}
	}
}

// TestUnsupported: what the applier would unpack differently, or refuse,
// is refused with ErrUnsupported so the caller unpacks instead.
func TestUnsupported(t *testing.T) {
	for name, es := range map[string][]entry{
		"through a symlink": {special(tar.TypeSymlink, "l", "d"), dir("d/", 0o755), file("l/f", 0o644, nil)},
		"absolute":          {file("/etc/x", 0o644, nil)},
		"dotdot":            {file("a/../../x", 0o644, nil)},
		"hard link to dir":  {dir("d/", 0o755), special(tar.TypeLink, "l", "d")},
		"dangling link":     {special(tar.TypeLink, "l", "nothing")},
		"through a file":    {file("f", 0o644, nil), file("f/g", 0o644, nil)},
		"empty symlink":     {special(tar.TypeSymlink, "l", "")},
		"system xattr":      {withXattrs(file("f", 0o644, nil), "system.posix_acl_access", "x")},
		"user xattr on dev": {withXattrs(special(tar.TypeFifo, "p", ""), "user.x", "y")},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "t.tar")
			writeTar(t, p, es)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := erofs.Build(io.Discard, f); !errors.Is(err, errors.ErrUnsupported) {
				t.Fatalf("Build: %v, want ErrUnsupported", err)
			}
		})
	}
	t.Run("sparse", func(t *testing.T) {
		if err := erofs.Build(io.Discard, bytes.NewReader(tartest.Sparse(1<<20))); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Build: %v, want ErrUnsupported", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Size: 5000, Mode: 0o644})
		tw.Write(make([]byte, 5000))
		tw.Close()
		err := erofs.Build(io.Discard, bytes.NewReader(b.Bytes()[:2048]))
		if err == nil || errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Build of a truncated tar: %v, want a read error", err)
		}
	})
}

// TestMountRefusesMismatch: Mount checks the image is one of ours and the
// tar is the size of the one it was built from.
func TestMountRefusesMismatch(t *testing.T) {
	needErofs(t)
	tmp := t.TempDir()
	tarPath, other, img, mnt := filepath.Join(tmp, "a.tar"), filepath.Join(tmp, "b.tar"), filepath.Join(tmp, "a.erofs"), filepath.Join(tmp, "mnt")
	writeTar(t, tarPath, []entry{file("f", 0o644, []byte("a"))})
	writeTar(t, other, []entry{file("f", 0o644, make([]byte, 20000))})
	var b bytes.Buffer
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := erofs.Build(&b, f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := erofs.Mount(img, other, mnt); err == nil || !strings.Contains(err.Error(), "blocks") {
		erofs.Unmount(mnt)
		t.Fatalf("Mount with another tar: %v, want a size mismatch", err)
	}
	if err := erofs.Mount(tarPath, tarPath, mnt); err == nil {
		erofs.Unmount(mnt)
		t.Fatal("Mount of a tar as the image succeeded")
	}
	if err := erofs.Mount(img, tarPath, mnt); err != nil {
		t.Fatal(err)
	}
	if err := erofs.Unmount(mnt); err != nil {
		t.Fatal(err)
	}
}
