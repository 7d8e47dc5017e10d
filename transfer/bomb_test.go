package transfer

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/lbuild/lbuild/internal/tartest"
	"github.com/lbuild/lbuild/store"
)

// gzipFile writes src gzip-compressed beside it and returns the new path.
func gzipFile(t *testing.T, src string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := src + ".gz"
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(out)
	if _, err := io.Copy(zw, in); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// A gzip-compressed archive that expands beyond maxLoadRatio× its size (and
// the floor, lowered here from 1 GiB to 1 MiB) is refused with one error
// naming the file and the bound, and leaves no image; a normal one loads.
func TestLoadDecompressionBomb(t *testing.T) {
	defer func(f int64) { loadExpansionFloor = f }(loadExpansionFloor)
	loadExpansionFloor = 1 << 20

	src := openStore(t)
	small := makeImage(t, src, "small:1", layerTar(t, map[string][]byte{"a": []byte("hello\n")}))
	bomb := makeImage(t, src, "bomb:1", layerTar(t, map[string][]byte{"zeros": make([]byte, 32<<20)}))

	okPath := gzipFile(t, saveFile(t, src, FormatDocker, []*store.Image{small}, nil))
	dst := openStore(t)
	if imgs := loadFile(t, dst, okPath); len(imgs) != 1 {
		t.Fatalf("loaded %d images", len(imgs))
	}

	bombPath := gzipFile(t, saveFile(t, src, FormatDocker, []*store.Image{bomb}, nil))
	fi, err := os.Stat(bombPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size()*maxLoadRatio >= 32<<20 {
		t.Fatalf("test archive compresses too little (%d bytes)", fi.Size())
	}
	dst = openStore(t)
	f, err := os.Open(bombPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Load(context.Background(), dst, f)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, filepath.Base(bombPath)) || !strings.Contains(msg, "100x") || strings.Contains(msg, "\n") {
		t.Fatalf("error should be one line naming the file and the bound: %q", msg)
	}
	if imgs, err := dst.Images(); err != nil || len(imgs) != 0 {
		t.Fatalf("a refused load left %d images (%v)", len(imgs), err)
	}

	// A 2 KiB plain tar holding a 1 TiB sparse file.
	sparse := filepath.Join(t.TempDir(), "sparse.tar")
	if err := os.WriteFile(sparse, tartest.Sparse(1<<40), 0o644); err != nil {
		t.Fatal(err)
	}
	sf, err := os.Open(sparse)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	if _, err := Load(context.Background(), dst, sf); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "sparse.tar") {
		t.Fatalf("sparse entry: got %v, want ErrTooLarge naming the file", err)
	}
}
