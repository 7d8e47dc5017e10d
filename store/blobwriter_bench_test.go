package store

import (
	"testing"
)

// BenchmarkBlobWriter streams 256 MiB into a blob in 128 KiB writes (as a
// layer's diff arrives) and commits it: the write to the page cache and
// the sha256 of the bytes are the cost.
func BenchmarkBlobWriter(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 128<<10)
	const total = 256 << 20
	b.SetBytes(total)
	for i := 0; i < b.N; i++ {
		chunk[0] = byte(i) // another blob each time
		chunk[1] = byte(i >> 8)
		w, err := s.Writer()
		if err != nil {
			b.Fatal(err)
		}
		for n := 0; n < total; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		if _, _, err := w.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}
