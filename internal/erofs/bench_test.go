package erofs_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lbuild/lbuild/internal/erofs"
	"github.com/lbuild/lbuild/snapshot"
)

// w2Tar writes a layer like workload W2: 10,000 files of 0.5-3.5 KB in 100
// directories and 5 files of 50 MB. It returns the tar's path and size.
func w2Tar(b *testing.B) (string, int64) {
	b.Helper()
	p := filepath.Join(b.TempDir(), "w2.tar")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	rng := rand.New(rand.NewPCG(1, 2))
	src := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, 50<<20)
	add := func(name string, size int) {
		src.Read(buf[:size])
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(size), ModTime: time.Unix(1700000000, 0)}); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(buf[:size]); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 10000 {
		add(fmt.Sprintf("src/d%02d/file%05d.txt", i%100, i), 512+rng.IntN(3072))
	}
	for i := range 5 {
		add(fmt.Sprintf("blobs/big%d.bin", i), 50<<20)
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	return p, st.Size()
}

// BenchmarkW2 measures Build over a W2-like layer, from a file (content is
// seeked over) and from a stream (content is read through), and Mount (with
// Unmount) of its image.
func BenchmarkW2(b *testing.B) {
	tarPath, size := w2Tar(b)
	f, err := os.Open(tarPath)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	build := func(b *testing.B, w io.Writer, stream bool) {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			b.Fatal(err)
		}
		var r io.Reader = f
		if stream {
			r = struct{ io.Reader }{f}
		}
		if err := erofs.Build(w, r); err != nil {
			b.Fatal(err)
		}
	}
	for _, stream := range []bool{false, true} {
		b.Run(map[bool]string{false: "build-file", true: "build-stream"}[stream], func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				build(b, io.Discard, stream)
			}
		})
	}
	// For comparison: what indexing replaces, unpacking with the applier.
	b.Run("applier-unpack", func(b *testing.B) {
		b.SetBytes(size)
		raw, err := os.ReadFile(tarPath)
		if err != nil {
			b.Fatal(err)
		}
		sum := sha256.Sum256(raw)
		name := snapshot.ChainID("", "sha256:"+hex.EncodeToString(sum[:]))
		for b.Loop() {
			s, err := snapshot.New(b.TempDir(), snapshot.DriverCopy)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Apply(context.Background(), name, "", bytes.NewReader(raw)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("mount", func(b *testing.B) {
		needErofs(b)
		dir := b.TempDir()
		img, mnt := filepath.Join(dir, "w2.erofs"), filepath.Join(dir, "mnt")
		out, err := os.Create(img)
		if err != nil {
			b.Fatal(err)
		}
		build(b, out, false)
		st, _ := out.Stat()
		out.Close()
		if err := os.Mkdir(mnt, 0o755); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := erofs.Mount(img, tarPath, mnt); err != nil {
				b.Fatal(err)
			}
			if err := erofs.Unmount(mnt); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(st.Size()), "image-bytes")
	})
}
