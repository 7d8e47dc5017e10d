package builder

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// benchContext writes n small files (about 2 KiB) plus one 16 MiB file.
func benchContext(b *testing.B, n int) string {
	dir := b.TempDir()
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 4096)
	for i := range n {
		rng.Read(buf)
		p := filepath.Join(dir, "small", fmt.Sprintf("d%02d", i/500), fmt.Sprintf("f%05d", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, buf[:512+rng.Intn(3072)], 0o644)
	}
	big := make([]byte, 16<<20)
	rng.Read(big)
	os.WriteFile(filepath.Join(dir, "big.bin"), big, 0o644)
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nENV A=1\nCOPY . /app\nLABEL done=yes\n"), 0o644)
	return dir
}

// BenchmarkRebuild measures a rebuild of a 5,000-file + 16 MiB context after
// nothing changed (noop), after one file changed (change1: the COPY reruns),
// and after every file's mtime changed (touchall: stat, rehash, all cached).
func BenchmarkRebuild(b *testing.B) {
	r := openRoot(b)
	dir := benchContext(b, 5000)
	opts := Options{ContextDir: dir}
	if _, err := Build(context.Background(), r, opts); err != nil {
		b.Fatal(err)
	}
	one := filepath.Join(dir, "small", "d03", "f01777")
	b.Run("noop", func(b *testing.B) {
		for b.Loop() {
			if _, err := Build(context.Background(), r, opts); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("change1", func(b *testing.B) {
		i := 0
		for b.Loop() {
			b.StopTimer()
			i++
			os.WriteFile(one, fmt.Appendf(nil, "edit %d %d", i, time.Now().UnixNano()), 0o644)
			b.StartTimer()
			res, err := Build(context.Background(), r, opts)
			if err != nil || res.Steps[2].Cached {
				b.Fatal("change1 must rerun the COPY", err)
			}
		}
	})
	b.Run("touchall", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			t := time.Now().Add(time.Duration(rand.Intn(1e6)) * time.Second)
			filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, t, t) })
			b.StartTimer()
			res, err := Build(context.Background(), r, opts)
			if err != nil || !res.Steps[2].Cached {
				b.Fatal("touchall must stay cached", err)
			}
		}
	})
}
