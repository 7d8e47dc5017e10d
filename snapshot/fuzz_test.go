package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/lbuild/lbuild/internal/tartest"
)

// FuzzApplyTar: applying any bytes as a layer tar, in overlay form or merged
// onto a tree, never panics and never changes anything outside the target
// directory (its sibling "outside" stays as it was).
func FuzzApplyTar(f *testing.F) {
	requireRoot(f)
	defer func(v int64) { applyExpansionFloor = v }(applyExpansionFloor)
	applyExpansionFloor = 1 << 20 // a sparse entry writes at most this
	seeds := [][]tarEntry{
		{dirEntry("a/", 0o755), reg("a/f", "hello", 0o644), symlink("a/l", "f"), hardlink("a/h", "a/f")},
		{dirEntry("dd/", 0o755), reg("dd", "file", 0o600)},
		{reg("x", "1", 0o644), dirEntry("x/", 0o700), reg("x/y", "2", 0o644)},
		{symlink("up", "../outside"), reg("up/f", "escape", 0o644)},
		{symlink("abs", "/tmp"), reg("abs/f", "escape", 0o644)},
		{reg("../outside/f", "escape", 0o644)},
		{reg("a", "1", 0o644), hardlink("b", "../outside/secret")},
		{dirEntry("d/", 0o755), reg("d/.wh.gone", "", 0o644), reg("d/.wh..wh..opq", "", 0o644), reg(".wh.d", "", 0o644)},
		{dirEntry("./", 0o700), {Header: tar.Header{Name: "p", Typeflag: tar.TypeFifo, Mode: 0o644}}},
		{{Header: tar.Header{Name: "x", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, PAXRecords: map[string]string{"SCHILY.xattr.user.a": "b", "SCHILY.xattr.trusted.overlay.opaque": "y"}}, Body: "z"}},
	}
	for _, s := range seeds {
		f.Add(mkTar(f, s...), false)
		f.Add(mkTar(f, s...), true)
	}
	f.Add(tartest.Sparse(1<<40), false)
	f.Fuzz(func(t *testing.T, data []byte, merge bool) {
		base := t.TempDir()
		outside := filepath.Join(base, "outside")
		target := filepath.Join(base, "target")
		check(t, os.MkdirAll(filepath.Join(outside, "sub"), 0o755))
		mustWrite(t, filepath.Join(outside, "secret"), "keep", 0o600)
		check(t, os.Mkdir(target, 0o755))
		if merge { // a lower layer to merge onto
			check(t, os.Mkdir(filepath.Join(target, "d"), 0o755))
			mustWrite(t, filepath.Join(target, "d", "gone"), "old", 0o644)
		}
		before := tree(t, outside)
		_ = applyTar(context.Background(), target, bytes.NewReader(data), merge)
		if after := tree(t, outside); after != before {
			t.Fatalf("apply changed what is outside its directory:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		entries, err := os.ReadDir(base)
		check(t, err)
		if len(entries) != 2 {
			t.Fatalf("apply created %d entries beside its directory", len(entries)-2)
		}
	})
}

// tree describes every file below dir: name, type, mode, size, times,
// content of small files.
func tree(t *testing.T, dir string) string {
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		line := fmt.Sprintf("%s %v %d %d", rel, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() && rel != "." {
			line += " " + mustRead(t, p)
		}
		lines = append(lines, line)
		return nil
	})
	check(t, err)
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}
