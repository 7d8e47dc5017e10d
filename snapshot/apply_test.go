package snapshot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
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
