package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	t0 = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	t1 = time.Date(2021, 6, 1, 12, 0, 0, 0, time.UTC)
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// newTestSnapshotter opens a snapshotter in a temp dir and, at the end of the
// test, detaches whatever is still mounted below it.
func newTestSnapshotter(t testing.TB, driver string) (*snapshotter, string) {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() { unmountAllUnder(dir) })
	s, err := New(dir, driver)
	if err != nil {
		t.Fatal(err)
	}
	return s.(*snapshotter), dir
}

func unmountAllUnder(dir string) {
	mounts, _ := readMountInfo()
	for i := len(mounts) - 1; i >= 0; i-- {
		if strings.HasPrefix(mounts[i].target, dir+"/") {
			unix.Unmount(mounts[i].target, unix.MNT_DETACH)
		}
	}
}

func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	mounts, err := readMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		if strings.HasPrefix(m.target, dir+"/") {
			out = append(out, m.target)
		}
	}
	return out
}

// tarEntry is a tar header plus body, for building and reading layers.
type tarEntry struct {
	tar.Header
	Body string
}

func reg(name, body string, mode int64) tarEntry {
	return tarEntry{Header: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(body)), ModTime: t0}, Body: body}
}

func dirEntry(name string, mode int64) tarEntry {
	return tarEntry{Header: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode, ModTime: t0}}
}

func symlink(name, target string) tarEntry {
	return tarEntry{Header: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777, ModTime: t0}}
}

func hardlink(name, target string) tarEntry {
	return tarEntry{Header: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, ModTime: t0}}
}

func mkTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.Body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readTar(t testing.TB, b []byte) []tarEntry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []tarEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{Header: *h, Body: string(body)})
	}
}

func names(es []tarEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name)
	}
	return out
}

func diffID(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func mustWrite(t testing.TB, p, body string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func lutimes(t testing.TB, p string, tm time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(tm.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return !errors.Is(err, os.ErrNotExist)
}

func xattr(t testing.TB, p, name string) string {
	t.Helper()
	v, err := getXattr(p, name)
	if errors.Is(err, unix.ENODATA) {
		return ""
	}
	check(t, err)
	return string(v)
}

// diffBytes runs Diff into a buffer.
func diffBytes(t testing.TB, s Snapshotter, key string) []byte {
	t.Helper()
	var buf bytes.Buffer
	check(t, s.Diff(context.Background(), key, &buf))
	return buf.Bytes()
}

// layerFS returns the fs dir of committed layer name.
func layerFS(t testing.TB, s Snapshotter, name string) string {
	t.Helper()
	dirs, err := s.LowerDirs(name)
	check(t, err)
	return dirs[0]
}

func statT(t testing.TB, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	check(t, unix.Lstat(p, &st))
	return &st
}
