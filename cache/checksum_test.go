package cache

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// walkEntries lists root's content as COPY . /dst would select it.
func walkEntries(t testing.TB, root string) []Entry {
	t.Helper()
	var out []Entry
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, Entry{Rel: filepath.ToSlash(rel), Abs: p, Info: fi})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rel < out[j].Rel })
	return out
}

func checksumOf(t testing.TB, x *FileIndex, root string) string {
	t.Helper()
	s, err := Checksum(x, walkEntries(t, root))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func makeContext(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "ctx")
	writeOld(t, filepath.Join(root, "app", "main.go"), "package main\n")
	writeOld(t, filepath.Join(root, "app", "run.sh"), "#!/bin/sh\n")
	os.Chmod(filepath.Join(root, "app", "run.sh"), 0o755)
	writeOld(t, filepath.Join(root, "README"), "readme")
	if err := os.Symlink("app/main.go", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "empty"), 0o755)
	return root
}

func TestChecksum(t *testing.T) {
	root := makeContext(t)
	settle()
	x, _ := OpenFileIndex("")
	base := checksumOf(t, x, root)
	if !strings.HasPrefix(base, "sha256:") || len(base) != 71 {
		t.Fatalf("checksum %q", base)
	}
	if got := checksumOf(t, nil, root); got != base {
		t.Fatal("checksum with and without an index differ")
	}
	if got := checksumOf(t, x, root); got != base {
		t.Fatal("checksum not stable")
	}
	if h, m := x.Stats(); h != 3 || m != 3 {
		t.Fatalf("Stats = %d hits, %d misses; want 3, 3", h, m)
	}

	same := func(name string, change func()) {
		t.Helper()
		change()
		if got := checksumOf(t, x, root); got != base {
			t.Errorf("%s changed the checksum", name)
		}
		if got := checksumOf(t, nil, root); got != base {
			t.Errorf("%s changed the checksum (no index)", name)
		}
	}
	differ := func(name string, change, undo func()) {
		t.Helper()
		change()
		if got := checksumOf(t, x, root); got == base {
			t.Errorf("%s did not change the checksum", name)
		}
		undo()
		if got := checksumOf(t, x, root); got != base {
			t.Errorf("undoing %s did not restore the checksum", name)
		}
	}
	p := func(rel string) string { return filepath.Join(root, rel) }
	newT := time.Now().Add(-10 * time.Minute)

	same("mtime of a file", func() { os.Chtimes(p("README"), newT, newT) })
	same("mtime of a dir", func() { os.Chtimes(p("app"), newT, newT) })
	same("mtime of everything", func() {
		for _, e := range walkEntries(t, root) {
			os.Chtimes(e.Abs, time.Now(), time.Now())
		}
	})
	same("ownership", func() { os.Lchown(p("README"), 1234, 5678); os.Lchown(p("link"), 1, 1) })
	same("inode (rewrite same content)", func() {
		os.Remove(p("README"))
		writeOld(t, p("README"), "readme")
	})

	differ("content, same size", func() {
		os.WriteFile(p("README"), []byte("README"), 0o644)
		os.Chtimes(p("README"), old, old)
	}, func() {
		os.WriteFile(p("README"), []byte("readme"), 0o644)
		os.Chtimes(p("README"), old, old)
	})
	differ("file mode", func() { os.Chmod(p("README"), 0o600) }, func() { os.Chmod(p("README"), 0o644) })
	differ("executable bit", func() { os.Chmod(p("app/run.sh"), 0o644) }, func() { os.Chmod(p("app/run.sh"), 0o755) })
	differ("setuid", func() { os.Chmod(p("app/run.sh"), 0o755|fs.ModeSetuid) }, func() { os.Chmod(p("app/run.sh"), 0o755) })
	differ("setgid", func() { os.Chmod(p("app"), 0o755|fs.ModeSetgid) }, func() { os.Chmod(p("app"), 0o755) })
	differ("sticky", func() { os.Chmod(p("empty"), 0o755|fs.ModeSticky) }, func() { os.Chmod(p("empty"), 0o755) })
	differ("dir mode", func() { os.Chmod(p("empty"), 0o700) }, func() { os.Chmod(p("empty"), 0o755) })
	differ("rename", func() { os.Rename(p("README"), p("README.md")) }, func() { os.Rename(p("README.md"), p("README")) })
	differ("symlink target", func() {
		os.Remove(p("link"))
		os.Symlink("app/run.sh", p("link"))
	}, func() {
		os.Remove(p("link"))
		os.Symlink("app/main.go", p("link"))
	})
	differ("new empty file", func() { writeOld(t, p("app/new"), "") }, func() { os.Remove(p("app/new")) })
	differ("file replaced by dir", func() {
		os.Remove(p("README"))
		os.Mkdir(p("README"), 0o644)
	}, func() {
		os.Remove(p("README"))
		writeOld(t, p("README"), "readme")
	})
}

func TestChecksumFieldSeparation(t *testing.T) {
	dir := t.TempDir()
	writeOld(t, filepath.Join(dir, "f"), "x")
	fi, _ := os.Lstat(filepath.Join(dir, "f"))
	sum := func(entries ...Entry) string {
		s, err := Checksum(nil, entries)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	f := filepath.Join(dir, "f")
	seen := map[string]string{}
	for name, s := range map[string]string{
		"none":       sum(),
		"ab":         sum(Entry{Rel: "ab", Abs: f, Info: fi}),
		"a":          sum(Entry{Rel: "a", Abs: f, Info: fi}),
		"ab,ab":      sum(Entry{Rel: "ab", Abs: f, Info: fi}, Entry{Rel: "ab", Abs: f, Info: fi}),
		"a,ab order": sum(Entry{Rel: "a", Abs: f, Info: fi}, Entry{Rel: "ab", Abs: f, Info: fi}),
		"ab,a order": sum(Entry{Rel: "ab", Abs: f, Info: fi}, Entry{Rel: "a", Abs: f, Info: fi}),
	} {
		if prev, ok := seen[s]; ok {
			t.Errorf("%s and %s collide", prev, name)
		}
		seen[s] = name
	}
	// Abs does not matter, only what is there.
	other := filepath.Join(dir, "other")
	writeOld(t, other, "x")
	ofi, _ := os.Lstat(other)
	if sum(Entry{Rel: "a", Abs: f, Info: fi}) != sum(Entry{Rel: "a", Abs: other, Info: ofi}) {
		t.Error("checksum depends on the host path")
	}
	if _, err := Checksum(nil, []Entry{{Rel: "gone", Abs: filepath.Join(dir, "gone")}}); err == nil {
		t.Error("Checksum of a missing file succeeded")
	}
}

func TestChecksumManyFilesParallel(t *testing.T) {
	root := t.TempDir()
	for i := range 500 {
		writeOld(t, filepath.Join(root, fmt.Sprintf("d%d", i%7), fmt.Sprintf("f%d", i)), fmt.Sprint(i))
	}
	settle()
	x, _ := OpenFileIndex("")
	a := checksumOf(t, x, root)
	if h, m := x.Stats(); h != 0 || m != 500 {
		t.Fatalf("cold: %d hits %d misses", h, m)
	}
	b := checksumOf(t, x, root)
	if h, m := x.Stats(); h != 500 || m != 500 {
		t.Fatalf("warm: %d hits %d misses", h, m)
	}
	if a != b || a != checksumOf(t, nil, root) {
		t.Fatal("checksums differ")
	}
}

// BenchmarkChecksum digests a context of 10,000 files of 2 KiB (about
// W2's small-file part) with an empty index (cold: every file read) and a
// warm one (stat data only).
func BenchmarkChecksum(b *testing.B) {
	root := b.TempDir()
	content := strings.Repeat("x", 2048)
	for i := range 10000 {
		p := filepath.Join(root, fmt.Sprintf("d%02d", i%100), fmt.Sprintf("f%05d", i))
		writeOld(b, p, content+fmt.Sprint(i))
	}
	settle()
	entries := walkEntries(b, root)

	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			x, _ := OpenFileIndex("")
			if _, err := Checksum(x, entries); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("warm", func(b *testing.B) {
		x, _ := OpenFileIndex("")
		if _, err := Checksum(x, entries); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := Checksum(x, entries); err != nil {
				b.Fatal(err)
			}
		}
		if _, m := x.Stats(); m != 10000 {
			b.Fatalf("%d misses, want only the first pass's 10000", m)
		}
	})
	b.Run("warm-with-lstat", func(b *testing.B) {
		// What a no-op rebuild pays: load the saved index, Lstat every file,
		// checksum.
		idx := filepath.Join(b.TempDir(), "files.idx")
		x, _ := OpenFileIndex(idx)
		Checksum(x, entries)
		if err := x.Save(); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			y, err := OpenFileIndex(idx)
			if err != nil {
				b.Fatal(err)
			}
			fresh := make([]Entry, len(entries))
			for i, e := range entries {
				fi, err := os.Lstat(e.Abs)
				if err != nil {
					b.Fatal(err)
				}
				fresh[i] = Entry{Rel: e.Rel, Abs: e.Abs, Info: fi}
			}
			if _, err := Checksum(y, fresh); err != nil {
				b.Fatal(err)
			}
			if h, _ := y.Stats(); h != 10000 {
				b.Fatalf("%d hits", h)
			}
		}
	})
}

// Checksum reads a file only at Abs itself, never through a symlink there,
// whatever Info says: the builder checks where a source resolves against
// .dockerignore, and a checksum must not read past that check into what the
// build may not see (its key would then depend on it).
func TestChecksumDoesNotFollowSymlink(t *testing.T) {
	dir := t.TempDir()
	writeOld(t, filepath.Join(dir, "secret"), "TOPSECRET")
	link := filepath.Join(dir, "link")
	if err := os.Symlink("secret", link); err != nil {
		t.Fatal(err)
	}
	target, err := os.Stat(link) // the target's info, as a caller following links would pass
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*FileIndex{nil, mustIndex(t)} {
		if s, err := Checksum(x, []Entry{{Rel: "f", Abs: link, Info: target}}); err == nil {
			t.Errorf("index %v: Checksum read through a symlink: %s", x != nil, s)
		}
	}
	if s, err := mustIndex(t).Sum(link, target); err == nil {
		t.Errorf("FileIndex.Sum read through a symlink: %s", s)
	}
	// With its own Lstat info, the link is hashed as a link (its target name).
	if _, err := Checksum(nil, []Entry{{Rel: "f", Abs: link}}); err != nil {
		t.Errorf("a symlink entry: %v", err)
	}
}

func mustIndex(t *testing.T) *FileIndex {
	t.Helper()
	x, err := OpenFileIndex("")
	if err != nil {
		t.Fatal(err)
	}
	return x
}
