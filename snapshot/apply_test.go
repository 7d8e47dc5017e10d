package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbuild/lbuild/internal/tartest"
)

// A later entry replaces an earlier one of another type, as GNU tar and
// docker do: directory "dd/" then file "dd" leaves the file (it used to
// fail with "set times dd: not a directory"), and the reverse leaves the
// directory with the last entry's times.
func TestApplyLastEntryWins(t *testing.T) {
	requireRoot(t)
	for _, merge := range []bool{false, true} {
		dir := t.TempDir()
		last := dirEntry("ee/", 0o700)
		last.ModTime = t1
		layer := mkTar(t,
			dirEntry("dd/", 0o755), reg("dd/x/f", "inner", 0o644), reg("dd", "file", 0o600),
			reg("ee", "file", 0o644), dirEntry("ee/", 0o750), last, dirEntry("ee/x/", 0o755),
		)
		if err := applyTar(context.Background(), dir, bytes.NewReader(layer), merge); err != nil {
			t.Fatalf("merge=%v: %v", merge, err)
		}
		fi, err := os.Lstat(filepath.Join(dir, "dd"))
		check(t, err)
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || mustRead(t, filepath.Join(dir, "dd")) != "file" {
			t.Fatalf("merge=%v: dd is %v, want the file", merge, fi.Mode())
		}
		fi, err = os.Lstat(filepath.Join(dir, "ee"))
		check(t, err)
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 || !fi.ModTime().Equal(t1) {
			t.Fatalf("merge=%v: ee is %v %v, want the last directory entry", merge, fi.Mode(), fi.ModTime())
		}
	}
}

// A 2 KiB layer holding a 1 TiB sparse file (Go's tar reader fills its
// holes with zeros) is refused once its files outgrow maxApplyRatio× the tar
// (and the floor, lowered here from 1 GiB to 1 MiB), instead of filling the
// disk.
func TestApplySparseBomb(t *testing.T) {
	requireRoot(t)
	defer func(f int64) { applyExpansionFloor = f }(applyExpansionFloor)
	applyExpansionFloor = 1 << 20
	dir := t.TempDir()
	err := applyTar(context.Background(), dir, bytes.NewReader(tartest.Sparse(1<<40)), false)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `"big"`) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want one line wrapping ErrTooLarge naming the entry", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "big")); err == nil && fi.Size() > 2<<20 {
		t.Fatalf("wrote %d bytes", fi.Size())
	}
}
