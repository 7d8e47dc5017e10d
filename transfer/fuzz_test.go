package transfer

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/lbuild/lbuild/store"
)

// FuzzLoad: loading any bytes into a fresh store never panics, and a load
// that fails leaves no image in the store.
func FuzzLoad(f *testing.F) {
	defer func(v int64) { loadExpansionFloor = v }(loadExpansionFloor)
	loadExpansionFloor = 1 << 20 // keep each input's writes small

	src := openStore(f)
	img := makeImage(f, src, "a:1", layerTar(f, map[string][]byte{"etc/os-release": []byte("ID=test\n")}))
	for _, format := range []Format{FormatDocker, FormatOCI} {
		var buf bytes.Buffer
		if err := Save(context.Background(), src, []*store.Image{img}, nil, &buf, format); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(buf.Bytes())
		zw.Close()
		f.Add(gz.Bytes())
	}
	f.Add([]byte{})
	f.Add([]byte{0x1f, 0x8b})
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := store.Open(fastTempDir(t))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Load(context.Background(), st, bytes.NewReader(data))
		if err == nil {
			return
		}
		imgs, ierr := st.Images()
		if ierr != nil {
			t.Fatalf("store unreadable after a failed load (%v): %v", err, ierr)
		}
		if len(imgs) != 0 {
			t.Fatalf("failed load (%v) left %d images", err, len(imgs))
		}
	})
}

// fastTempDir is a temp dir in /dev/shm when there is one (the store
// syncs what it writes, which tmpfs makes cheap), else t.TempDir().
func fastTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "lbuild-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
