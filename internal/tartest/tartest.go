// Package tartest makes hostile tar streams for the tests of lbuild's tar
// readers (the layer applier, ADD, load). It is imported by tests only.
package tartest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"strconv"
)

// PaxRecord formats one PAX extended header record.
func PaxRecord(k, v string) string {
	s := " " + k + "=" + v + "\n"
	n := len(s)
	for l := 0; l != n; {
		l, n = n, len(strconv.Itoa(n))+len(s)
	}
	return strconv.Itoa(n) + s
}

// Sparse is a 2 KiB plain tar whose one file, "big", is a GNU sparse file
// (PAX format 0.1) of size bytes, all hole: Go's tar reader expands it.
// Go's tar writer cannot write one, so the 'x' header is patched in.
func Sparse(size int64) []byte {
	body := PaxRecord("GNU.sparse.major", "0") + PaxRecord("GNU.sparse.minor", "1") +
		PaxRecord("GNU.sparse.size", strconv.FormatInt(size, 10)) + PaxRecord("GNU.sparse.numblocks", "1") +
		PaxRecord("GNU.sparse.map", "0,0") + PaxRecord("GNU.sparse.name", "big")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// Writing to a bytes.Buffer with valid USTAR headers cannot fail.
	tw.WriteHeader(&tar.Header{Name: "PaxHeaders/big", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body)), Format: tar.FormatUSTAR})
	io.WriteString(tw, body)
	tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatUSTAR})
	tw.Close()
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
