package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMeasurePush times pushes of a ~50 MB layer of real files (from
// /usr/lib) to Debian's docker-registry. It only runs with
// LBUILD_MEASURE=1; the figures are logged (go test -v).
func TestMeasurePush(t *testing.T) {
	if os.Getenv("LBUILD_MEASURE") == "" {
		t.Skip("set LBUILD_MEASURE=1 to measure")
	}
	ctx := context.Background()
	cnt := newCounter()
	host := startDockerRegistry(t, cnt)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	const limit = 50 << 20
	filepath.WalkDir("/usr/lib", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || buf.Len() > limit {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil || len(b) > 8<<20 {
			return nil
		}
		tw.WriteHeader(&tar.Header{Name: p[1:], Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1, 0)})
		tw.Write(b)
		return nil
	})
	tw.Close()
	t.Logf("layer: %.1f MB uncompressed", float64(buf.Len())/(1<<20))
	for _, comp := range []string{"gzip", "zstd", "zstd,level=9"} {
		st := openStore(t)
		img := makeImage(t, st, "m:1", buf.Bytes())
		for i := 1; i <= 2; i++ {
			cnt.reset()
			start := time.Now()
			if _, err := Push(ctx, st, img, host+"/measure:"+time.Now().Format("150405.000000"), WithCompression(comp)); err != nil {
				t.Fatal(err)
			}
			el := time.Since(start)
			out, _ := Prepare(ctx, st, img, mustComp(t, comp), 1, nil)
			t.Logf("%-13s push %d: %6.2fs  compressed %.1f MB (ratio %.2f)  blob uploads %d",
				comp, i, el.Seconds(), float64(out.Layers[0].Size)/(1<<20), float64(out.Layers[0].Size)/float64(buf.Len()), cnt.get("commit"))
		}
	}
}

func mustComp(t *testing.T, s string) Compression {
	c, err := ParseCompression(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
