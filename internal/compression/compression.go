// Package compression names and undoes the compressions a layer or an
// archive can come in (gzip, zstd, bzip2, xz), by media type or by the
// stream's first bytes. It is the one sniffer and decompressor of lbuild.
package compression

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Kind is a compression format.
type Kind string

// The formats Detect knows.
const (
	None  Kind = ""
	Gzip  Kind = "gzip"
	Zstd  Kind = "zstd"
	Bzip2 Kind = "bzip2"
	Xz    Kind = "xz"
)

// DetectBytes names the compression of a stream from its first bytes (at
// least 6 are needed to tell every kind apart).
func DetectBytes(head []byte) Kind {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return Gzip
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	case bytes.HasPrefix(head, []byte("BZh")):
		return Bzip2
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return Xz
	}
	return None
}

// Detect peeks at br's first bytes and names their compression.
func Detect(br *bufio.Reader) Kind {
	head, _ := br.Peek(6)
	return DetectBytes(head)
}

// ByMediaType names the compression an OCI or docker layer media type says
// its blob has.
func ByMediaType(mt string) Kind {
	switch mt {
	case "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return Gzip
	case "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
		return Zstd
	}
	return None
}

// Reader returns a reader of r's content decompressed as kind; closing it
// releases the decompressor (not r).
func Reader(r io.Reader, kind Kind) (io.ReadCloser, error) {
	switch kind {
	case None:
		return io.NopCloser(r), nil
	case Gzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case Zstd:
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	case Bzip2:
		return io.NopCloser(bzip2.NewReader(r)), nil
	case Xz:
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return io.NopCloser(xr), nil
	}
	return nil, fmt.Errorf("unknown compression %q", kind)
}

// DecompressMediaType returns r decompressed as the layer media type mt says.
func DecompressMediaType(r io.Reader, mt string) (io.ReadCloser, error) {
	return Reader(r, ByMediaType(mt))
}

// Sniff returns r decompressed as its first bytes say, and the kind found.
func Sniff(r io.Reader) (io.ReadCloser, Kind, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	k := Detect(br)
	rc, err := Reader(br, k)
	return rc, k, err
}
