package snapshot

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkDiff measures Diff of a step that wrote 2,000 files of 1 KiB in
// 20 directories ("new2000"), and of a step that changed one file over a
// parent holding those 2,000 files ("change1of2000": the copy driver walks
// the whole tree, overlay only its upperdir).
func BenchmarkDiff(b *testing.B) {
	body := strings.Repeat("x", 1024)
	write := func(b *testing.B, v string) {
		for d := range 20 {
			dir := filepath.Join(v, fmt.Sprintf("d%02d", d))
			check(b, os.Mkdir(dir, 0o755))
			for f := range 100 {
				mustWrite(b, filepath.Join(dir, fmt.Sprintf("f%03d", f)), body, 0o644)
			}
		}
	}
	for _, driver := range drivers {
		// "new2000clamped" is new2000 WithSourceDateEpoch: every entry is
		// clamped, in the tar and on disk.
		for name, opts := range map[string][]DiffOpt{"new2000": nil, "new2000clamped": {WithSourceDateEpoch(time.Unix(0, 0))}} {
			b.Run(driver+"/"+name, func(b *testing.B) {
				ctx := context.Background()
				s, _ := newTestSnapshotter(b, driver)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					key := fmt.Sprint("k", i)
					v, err := s.Prepare(ctx, key, "")
					check(b, err)
					write(b, v)
					b.StartTimer()
					check(b, s.Diff(ctx, key, io.Discard, opts...))
					b.StopTimer()
					check(b, s.Remove(ctx, key))
					b.StartTimer()
				}
			})
		}
		b.Run(driver+"/change1of2000", func(b *testing.B) {
			ctx := context.Background()
			s, _ := newTestSnapshotter(b, driver)
			v, err := s.Prepare(ctx, "base", "")
			check(b, err)
			write(b, v)
			base := ChainID("", "sha256:"+strings.Repeat("e", 64))
			check(b, s.Commit(ctx, base, "base"))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				key := fmt.Sprint("k", i)
				v, err := s.Prepare(ctx, key, base)
				check(b, err)
				mustWrite(b, filepath.Join(v, "d07", "f042"), "changed", 0o644)
				b.StartTimer()
				check(b, s.Diff(ctx, key, io.Discard))
				b.StopTimer()
				check(b, s.Remove(ctx, key))
				b.StartTimer()
			}
		})
	}
}
