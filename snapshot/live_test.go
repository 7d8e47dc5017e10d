package snapshot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestLive checks DiffLive, Changes and Usage on a persistent snapshot that
// stays mounted and usable, on every driver.
func TestLive(t *testing.T) {
	requireRoot(t)
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) { testLive(t, d) })
	}
}

func testLive(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "ctr", base, WithPersistent())
	check(t, err)
	defer s.Remove(ctx, "ctr")

	mustWrite(t, filepath.Join(v, "dir/new"), "hello", 0o644)
	mustWrite(t, filepath.Join(v, "etc/passwd"), "root:x:0:0:changed", 0o644)
	check(t, os.Remove(filepath.Join(v, "del.txt")))
	check(t, os.MkdirAll(filepath.Join(v, "a/b"), 0o755))

	// Another process may use a persistent snapshot: this one holds no lock.
	other, err := New(s.root, driver)
	check(t, err)
	changes, err := other.Changes(ctx, "ctr")
	check(t, err)
	var got []string
	for _, c := range changes {
		got = append(got, c.String())
	}
	want := []string{"A /a", "A /a/b", "D /del.txt", "C /dir", "A /dir/new", "C /etc", "C /etc/passwd"}
	if !slices.Equal(got, want) {
		t.Errorf("Changes = %q, want %q", got, want)
	}

	var live bytes.Buffer
	check(t, other.DiffLive(ctx, "ctr", &live))
	es := readTar(t, live.Bytes())
	if n := names(es); !slices.Contains(n, ".wh.del.txt") || !slices.Contains(n, "dir/new") {
		t.Errorf("DiffLive entries %q", n)
	}
	// Still mounted and writable, and a second DiffLive gives the same bytes
	// (the rewrite keeps the file's time: a second boundary crossed in
	// between would change the tar).
	fi, err := os.Stat(filepath.Join(v, "dir/new"))
	check(t, err)
	mustWrite(t, filepath.Join(v, "dir/new"), "hello", 0o644)
	check(t, os.Chtimes(filepath.Join(v, "dir/new"), fi.ModTime(), fi.ModTime()))
	var again bytes.Buffer
	check(t, other.DiffLive(ctx, "ctr", &again))
	if !bytes.Equal(live.Bytes(), again.Bytes()) {
		t.Error("DiffLive is not repeatable on an unchanged snapshot")
	}
	n, err := other.Usage(ctx, "ctr")
	check(t, err)
	if n < int64(len("hello")+len("root:x:0:0:changed")) || n > 4096 {
		t.Errorf("Usage = %d", n)
	}
	// The destructive Diff agrees with DiffLive.
	if d := diffBytes(t, other, "ctr"); !bytes.Equal(d, live.Bytes()) {
		t.Error("Diff and DiffLive differ")
	}
	check(t, other.Remove(ctx, "ctr"))
}
