package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestFileListRoundTripAndSize(t *testing.T) {
	m, err := OpenManifests(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var rows []FileRow
	for i := range 10000 {
		sum := sha256.Sum256(fmt.Appendf(nil, "%d", i))
		rows = append(rows, FileRow{Path: fmt.Sprintf("src/pkg%02d/file%05d.go", i/500, i), Mode: "file 0644", Digest: hex.EncodeToString(sum[:])})
	}
	rows = append(rows, FileRow{Path: "odd\tname\n", Mode: "symlink 0777", Digest: "->target"}, FileRow{Path: "src", Mode: "dir 0755"})
	rows = SortRows(append(rows, rows[0]))
	d, err := m.PutFiles(rows)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := m.BlobPath(d)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("10,000-file list: %d bytes", fi.Size())
	if fi.Size() > 1<<20 {
		t.Errorf("10,000-file list is %d bytes, want at most 1 MiB", fi.Size())
	}
	got, err := m.Files(d)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, rows) {
		t.Fatalf("round trip differs: %d rows, want %d", len(got), len(rows))
	}
	// The same rows are the same blob.
	if d2, _ := m.PutFiles(rows); d2 != d {
		t.Errorf("same rows, digests %s and %s", d, d2)
	}
	// A damaged blob is ErrCorrupt, a missing one ErrNotFound.
	os.Chmod(p, 0o644)
	os.WriteFile(p, []byte("garbage"), 0o644)
	if _, err := m.Files(d); !errors.Is(err, ErrCorrupt) {
		t.Errorf("damaged blob: %v", err)
	}
	if _, err := m.Get("sha256:" + hex.EncodeToString(make([]byte, 32))); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}
}

func TestDiffFiles(t *testing.T) {
	old := []FileRow{{"a", "file 0644", "1"}, {"b", "file 0644", "2"}, {"c", "file 0644", "3"}, {"d", "file 0644", "4"}, {"e", "symlink 0777", "->x"}}
	new := []FileRow{{"a", "file 0644", "1"}, {"b", "file 0600", "2"}, {"bb", "file 0644", "9"}, {"d", "file 0644", "5"}, {"e", "file 0777", "->x"}}
	want := []FileChange{{"b", "mode"}, {"bb", "added"}, {"c", "removed"}, {"d", "modified"}, {"e", "modified"}}
	if got := DiffFiles(old, new); !reflect.DeepEqual(got, want) {
		t.Errorf("DiffFiles = %v, want %v", got, want)
	}
	if got := DiffFiles(nil, old[:1]); !reflect.DeepEqual(got, []FileChange{{"a", "added"}}) {
		t.Errorf("from nothing: %v", got)
	}
	if got := DiffFiles(old, old); got != nil {
		t.Errorf("no change: %v", got)
	}
}

func TestManifestIndexAndLast(t *testing.T) {
	m, err := OpenManifests(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	parent, k := NewKey("", "p"), NewKey("", "k")
	man := &Manifest{Inputs: Inputs{Parent: parent, Instruction: "RUN x"}, Text: "RUN x", Kind: "run"}
	d, err := m.Put(man)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Get(d); err != nil || !reflect.DeepEqual(got, man) {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if _, err := m.Next(parent, "RUN x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Next before Index: %v", err)
	}
	if err := m.Index(k, man); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Next(parent, "RUN x"); err != nil || got != k {
		t.Errorf("Next = %s, %v", got, err)
	}
	if err := m.PutLast("df\x00", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if b, err := m.Last("df\x00"); err != nil || string(b) != "one" {
		t.Errorf("Last = %q, %v", b, err)
	}
	if _, err := m.Last("other"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Last of another build: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(m.Dir(), "last"))
	if len(ents) != 1 {
		t.Errorf("last/ holds %d files", len(ents))
	}
}

func TestRedact(t *testing.T) {
	if Redact("COLOR", "blue") != "blue" {
		t.Error("a plain ARG is kept")
	}
	for _, n := range []string{"API_TOKEN", "db_password", "MySecret", "SSH_KEY"} {
		r := Redact(n, "hunter2")
		if r == "hunter2" || r != Redact(n, "hunter2") || r == Redact(n, "hunter3") {
			t.Errorf("Redact(%s) = %s", n, r)
		}
	}
}

// BenchmarkFileList measures what a COPY of a 10,000-file context adds when
// it runs (store its file list) and what --explain adds when it misses
// (read the neighbour's list and diff the two in one pass).
func BenchmarkFileList(b *testing.B) {
	m, err := OpenManifests(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	rows := make([]FileRow, 10000)
	for i := range rows {
		sum := sha256.Sum256(fmt.Appendf(nil, "%d", i))
		rows[i] = FileRow{Path: fmt.Sprintf("src/pkg%02d/file%05d.go", i/500, i), Mode: "file 0644", Digest: hex.EncodeToString(sum[:])}
	}
	d, err := m.PutFiles(rows)
	if err != nil {
		b.Fatal(err)
	}
	changed := append([]FileRow(nil), rows...)
	changed[1234].Digest = "0"
	b.Run("put", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			changed[0].Digest = fmt.Sprint(i) // a new blob each time
			if _, err := m.PutFiles(changed); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("diff", func(b *testing.B) {
		for b.Loop() {
			old, err := m.Files(d)
			if err != nil {
				b.Fatal(err)
			}
			if n := len(DiffFiles(old, changed)); n != 2 {
				b.Fatalf("%d changes", n)
			}
		}
	})
}
