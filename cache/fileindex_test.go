package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

var old = time.Now().Add(-time.Hour).Truncate(time.Second).Add(123456789)

// writeOld writes a file whose mtime is an hour ago.
func writeOld(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

// settle waits until ctimes set so far are outside the racy window.
func settle() { time.Sleep(racyCtime + 50*time.Millisecond) }

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func mustSum(t testing.TB, x *FileIndex, p string) string {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	s, err := x.Sum(p, fi)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wantStats(t testing.TB, x *FileIndex, hits, misses int) {
	t.Helper()
	if h, m := x.Stats(); h != hits || m != misses {
		t.Fatalf("Stats = %d hits, %d misses; want %d, %d", h, m, hits, misses)
	}
}

func TestFileIndexHitAndPersist(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ctx", "a.txt")
	writeOld(t, p, "hello")
	settle()
	idxPath := filepath.Join(dir, "state", "files.idx")
	x, err := OpenFileIndex(idxPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustSum(t, x, p); got != digestOf("hello") {
		t.Fatalf("Sum = %s", got)
	}
	wantStats(t, x, 0, 1)
	if got := mustSum(t, x, p); got != digestOf("hello") {
		t.Fatalf("Sum = %s", got)
	}
	wantStats(t, x, 1, 1)
	if err := x.Save(); err != nil {
		t.Fatal(err)
	}

	y, err := OpenFileIndex(idxPath)
	if err != nil {
		t.Fatal(err)
	}
	if y.Len() != 1 {
		t.Fatalf("reopened index has %d entries", y.Len())
	}
	if got := mustSum(t, y, p); got != digestOf("hello") {
		t.Fatalf("Sum = %s", got)
	}
	wantStats(t, y, 1, 0)
	// Nothing changed: Save does not rewrite the file.
	before, _ := os.Stat(idxPath)
	if err := y.Save(); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(idxPath)
	if !os.SameFile(before, after) {
		t.Fatal("Save rewrote an unchanged index")
	}
	// Sum with a nil FileInfo stats the file itself.
	if s, err := y.Sum(p, nil); err != nil || s != digestOf("hello") {
		t.Fatalf("Sum(nil info) = %s, %v", s, err)
	}
}

func TestFileIndexCtimeForcesRehash(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	writeOld(t, p, "aaaa")
	settle()
	x, _ := OpenFileIndex("")
	mustSum(t, x, p)
	mustSum(t, x, p)
	wantStats(t, x, 1, 1)
	fi1, _ := os.Lstat(p)

	// Same size, mtime restored: only ctime tells.
	if err := os.WriteFile(p, []byte("bbbb"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Lstat(p)
	if fi1.Size() != fi2.Size() || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Fatal("test setup: size or mtime differ")
	}
	if got := mustSum(t, x, p); got != digestOf("bbbb") {
		t.Fatalf("Sum after change = %s, want %s", got, digestOf("bbbb"))
	}
	wantStats(t, x, 1, 2)

	// Replaced by another file (new inode) with identical times and size.
	q := p + ".new"
	writeOld(t, q, "cccc")
	if err := os.Rename(q, p); err != nil {
		t.Fatal(err)
	}
	settle()
	if got := mustSum(t, x, p); got != digestOf("cccc") {
		t.Fatalf("Sum after replace = %s", got)
	}
}

func TestFileIndexRacilyClean(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fresh")
	if err := os.WriteFile(p, []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	x, _ := OpenFileIndex("")
	// mtime is now: the entry is not trusted, every Sum reads.
	mustSum(t, x, p)
	mustSum(t, x, p)
	wantStats(t, x, 0, 2)

	// Once mtime and ctime are old enough, it is.
	os.Chtimes(p, old, old)
	settle()
	mustSum(t, x, p)
	mustSum(t, x, p)
	wantStats(t, x, 1, 3)
}

func TestFileIndexRacyBoundary(t *testing.T) {
	// Use a fake clock relative to a future mtime, so that ctime (real
	// time, now) is well outside its window and only the mtime rule acts.
	p := filepath.Join(t.TempDir(), "f")
	writeOld(t, p, "x")
	mtime := time.Now().Add(time.Hour)
	os.Chtimes(p, mtime, mtime)
	settle()
	for _, tc := range []struct {
		hashedAt time.Duration // after mtime
		trusted  bool
	}{
		{-time.Second, false}, // mtime in the future
		{0, false},
		{1900 * time.Millisecond, false},
		{2100 * time.Millisecond, true},
		{time.Minute, true},
	} {
		x, _ := OpenFileIndex("")
		x.now = func() time.Time { return mtime.Add(tc.hashedAt) }
		mustSum(t, x, p)
		mustSum(t, x, p)
		if h, _ := x.Stats(); (h == 1) != tc.trusted {
			t.Errorf("hashed %v after mtime: trusted = %v, want %v", tc.hashedAt, h == 1, tc.trusted)
		}
	}
}

func TestFileIndexCorruptFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	writeOld(t, p, "content")
	settle()
	idx := filepath.Join(dir, "files.idx")
	x, _ := OpenFileIndex(idx)
	mustSum(t, x, p)
	if err := x.Save(); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(idx)

	var logs bytes.Buffer
	logrus.SetOutput(&logs)
	defer logrus.SetOutput(os.Stderr)
	flipped := bytes.Clone(good)
	flipped[len(indexMagic)+3] ^= 0xff
	for name, content := range map[string][]byte{
		"empty":     {},
		"garbage":   []byte("not an index at all, but long enough to have a trailer....."),
		"truncated": good[:len(good)-5],
		"flipped":   flipped,
		"short":     good[:len(indexMagic)+1],
	} {
		logs.Reset()
		os.WriteFile(idx, content, 0o644)
		y, err := OpenFileIndex(idx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if y.Len() != 0 {
			t.Errorf("%s: %d entries", name, y.Len())
		}
		if !strings.Contains(logs.String(), "corrupt") {
			t.Errorf("%s: no warning logged: %q", name, logs.String())
		}
		if got := mustSum(t, y, p); got != digestOf("content") {
			t.Errorf("%s: Sum = %s", name, got)
		}
	}
	// The last one saves a good index over the corrupt file.
	y, _ := OpenFileIndex(idx)
	if err := y.Save(); err != nil {
		t.Fatal(err)
	}
	if _, err := decodeIndex(mustRead(t, idx)); err != nil {
		t.Fatalf("saved index is corrupt: %v", err)
	}
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFileIndexEncodeRoundTrip(t *testing.T) {
	m := map[string]fileEntry{
		"/a":                      {fileStat: fileStat{size: 1, mtime: -5, ctime: 7, ino: 1 << 40, dev: 66305}, hashedAt: 9, used: 10, sum: sha256.Sum256([]byte("a"))},
		"/b/ü space":              {sum: sha256.Sum256([]byte("b"))},
		strings.Repeat("/x", 500): {fileStat: fileStat{size: 1 << 40}},
	}
	got, err := decodeIndex(encodeIndex(m))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(m) {
		t.Fatalf("%d entries", len(got))
	}
	for k, v := range m {
		if got[k] != v {
			t.Errorf("%q: got %+v, want %+v", k, got[k], v)
		}
	}
}

func TestFileIndexExpiry(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	writeOld(t, p, "x")
	idx := filepath.Join(dir, "files.idx")
	x, _ := OpenFileIndex(idx)
	x.now = func() time.Time { return time.Now().Add(-40 * 24 * time.Hour) }
	mustSum(t, x, p)
	x.now = time.Now
	if err := x.Save(); err != nil {
		t.Fatal(err)
	}
	y, _ := OpenFileIndex(idx)
	if y.Len() != 0 {
		t.Fatalf("entry unused for 40 days kept")
	}
}

func TestFileIndexErrors(t *testing.T) {
	dir := t.TempDir()
	x, _ := OpenFileIndex("")
	if _, err := x.Sum(dir, nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("Sum(dir) = %v", err)
	}
	if _, err := x.Sum(filepath.Join(dir, "missing"), nil); err == nil {
		t.Fatal("Sum(missing) succeeded")
	}
	// A path under a regular file cannot be opened, nor saved to.
	f := filepath.Join(dir, "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := OpenFileIndex(filepath.Join(f, "idx")); err == nil {
		t.Fatal("OpenFileIndex under a regular file succeeded")
	}
	y, err := OpenFileIndex(filepath.Join(dir, "sub", "idx"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "sub"), nil, 0o644)
	writeOld(t, filepath.Join(dir, "g"), "g")
	mustSum(t, y, filepath.Join(dir, "g"))
	if err := y.Save(); err == nil {
		t.Fatal("Save under a regular file succeeded")
	}
}

func TestFileIndexConcurrent(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for i := range 64 {
		p := filepath.Join(dir, fmt.Sprintf("f%02d", i))
		writeOld(t, p, strings.Repeat(fmt.Sprint(i), 1000))
		paths = append(paths, p)
	}
	settle()
	x, _ := OpenFileIndex(filepath.Join(dir, "idx"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for round := range 3 {
				for i, p := range paths {
					fi, _ := os.Lstat(p)
					s, err := x.Sum(p, fi)
					if err != nil || s != digestOf(strings.Repeat(fmt.Sprint(i), 1000)) {
						t.Errorf("round %d %s: %s, %v", round, p, s, err)
					}
				}
				if err := x.Save(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	h, m := x.Stats()
	if h+m != 8*3*64 || m < 64 || x.Len() != 64 {
		t.Fatalf("hits %d misses %d len %d", h, m, x.Len())
	}
}
