package system

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/lbuild/lbuild/cache"
)

// BenchmarkPrune prunes a root holding 1,000 layer blobs and 10,000 step
// records (1,000 of them with a layer, 9,000 metadata records), with --all:
// every record and every blob goes. Setup is not timed.
func BenchmarkPrune(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r, err := Open(b.TempDir(), WithSnapshotter("copy"))
		if err != nil {
			b.Fatal(err)
		}
		for j := 0; j < 10000; j++ {
			var buf [8]byte
			binary.BigEndian.PutUint64(buf[:], uint64(j))
			rec := &cache.Record{Key: cache.NewKey("", fmt.Sprint(j)), Created: time.Now(), CreatedBy: "RUN step"}
			if j < 1000 {
				h, n, err := r.Store.PutBlob(bytes.NewReader(bytes.Repeat(buf[:], 512)))
				if err != nil {
					b.Fatal(err)
				}
				rec.DiffID, rec.Size = h.String(), n
			}
			if err := r.Records.Put(rec); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		rep, err := r.Prune(context.Background(), PruneOptions{All: true})
		if err != nil {
			b.Fatal(err)
		}
		if rep.Records != 10000 || rep.Blobs != 1000 {
			b.Fatalf("pruned %d records and %d blobs, want 10000 and 1000", rep.Records, rep.Blobs)
		}
	}
}
