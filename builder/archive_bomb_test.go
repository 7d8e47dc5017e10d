package builder

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/lbuild/lbuild/internal/tartest"
)

// ADD of a local archive that expands beyond maxArchiveRatio× its size
// (and the floor, lowered here from 1 GiB to 1 MiB) fails with one error
// naming the file and the bound: a gzip of zeros, and a plain tar holding a
// sparse file. A normal archive still extracts.
func TestAddArchiveBomb(t *testing.T) {
	defer func(f int64) { archiveExpansionFloor = f }(archiveExpansionFloor)
	archiveExpansionFloor = 1 << 20

	dir := t.TempDir()
	gz := func(name string, files map[string]int) string {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for n, size := range files {
			if err := tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)}); err != nil {
				t.Fatal(err)
			}
			tw.Write(make([]byte, size))
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok := gz("ok.tar.gz", map[string]int{"small": 4096})
	root := t.TempDir()
	if done, err := extractArchive(root, "/x", ok, 0, 0, false); !done || err != nil {
		t.Fatalf("normal archive: %v %v", done, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "x", "small")); err != nil || fi.Size() != 4096 {
		t.Fatalf("normal archive not extracted: %v", err)
	}

	sparse := filepath.Join(dir, "sparse.tar")
	if err := os.WriteFile(sparse, tartest.Sparse(1<<40), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{gz("bomb.tar.gz", map[string]int{"zeros": 32 << 20}), sparse} {
		root := t.TempDir()
		done, err := extractArchive(root, "/x", src, 0, 0, false)
		if !done || !errors.Is(err, errArchiveTooLarge) {
			t.Fatalf("%s: got %v %v, want errArchiveTooLarge", src, done, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, src) || !strings.Contains(msg, "100x") || strings.Contains(msg, "\n") {
			t.Fatalf("error should be one line naming the file and the bound: %q", msg)
		}
	}
}
