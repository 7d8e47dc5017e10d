package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// A 2 KiB layer holding a 1 TiB sparse file (Go's tar reader fills its
// holes with zeros) is refused once its files outgrow maxApplyRatio× the tar
// (and the floor, lowered here from 1 GiB to 1 MiB), instead of filling the
// disk.
func TestApplySparseBomb(t *testing.T) {
	requireRoot(t)
	defer func(f int64) { applyExpansionFloor = f }(applyExpansionFloor)
	applyExpansionFloor = 1 << 20
	dir := t.TempDir()
	err := applyTar(context.Background(), dir, bytes.NewReader(sparseTar(t, 1<<40)), false)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `"big"`) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want one line wrapping ErrTooLarge naming the entry", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "big")); err == nil && fi.Size() > 2<<20 {
		t.Fatalf("wrote %d bytes", fi.Size())
	}
}

// paxRecord formats one PAX extended header record.
func paxRecord(k, v string) string {
	s := " " + k + "=" + v + "\n"
	n := len(s)
	for l := 0; l != n; {
		l, n = n, len(strconv.Itoa(n))+len(s)
	}
	return strconv.Itoa(n) + s
}

// sparseTar is a 2 KiB tar whose one file, "big", is a GNU sparse file (PAX
// format 0.1) of size bytes, all hole. Go's tar writer cannot write one, so
// the 'x' header is patched in.
func sparseTar(t testing.TB, size int64) []byte {
	body := paxRecord("GNU.sparse.major", "0") + paxRecord("GNU.sparse.minor", "1") +
		paxRecord("GNU.sparse.size", strconv.FormatInt(size, 10)) + paxRecord("GNU.sparse.numblocks", "1") +
		paxRecord("GNU.sparse.map", "0,0") + paxRecord("GNU.sparse.name", "big")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "PaxHeaders/big", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body)), Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, body)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	b[156] = tar.TypeXHeader
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}
