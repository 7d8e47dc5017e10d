package system

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/lbuild/lbuild/snapshot"
)

func layerTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(data))
	}
	tw.Close()
	return b.Bytes()
}

func diffIDOf(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// storeImage writes an image whose config claims diffIDs over the given
// layer blobs, as a hostile archive or registry could.
func storeImage(t *testing.T, r *Root, diffIDs []v1.Hash, blobs ...[]byte) ([]v1.Descriptor, *v1.ConfigFile) {
	t.Helper()
	return storeImageAs(t, r, types.OCIUncompressedLayer, diffIDs, blobs...)
}

// storeImageAs is storeImage with the layer tars stored as mt: gzip or
// zstd compressed, or uncompressed.
func storeImageAs(t *testing.T, r *Root, mt types.MediaType, diffIDs []v1.Hash, blobs ...[]byte) ([]v1.Descriptor, *v1.ConfigFile) {
	t.Helper()
	var layers []v1.Descriptor
	for _, b := range blobs {
		var buf bytes.Buffer
		var w io.WriteCloser
		switch mt {
		case types.OCILayer:
			w = gzip.NewWriter(&buf)
		case types.OCILayerZStd:
			zw, err := zstd.NewWriter(&buf)
			if err != nil {
				t.Fatal(err)
			}
			w = zw
		default:
			buf.Write(b)
		}
		if w != nil {
			w.Write(b)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
		}
		h, n, err := r.Store.PutBlob(&buf)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, v1.Descriptor{MediaType: mt, Digest: h, Size: n})
	}
	cfg := &v1.ConfigFile{Architecture: "amd64", OS: "linux", RootFS: v1.RootFS{Type: "layers", DiffIDs: diffIDs}}
	if _, err := r.Store.WriteImage(cfg, layers); err != nil {
		t.Fatal(err)
	}
	return layers, cfg
}

// A layer whose content does not have the diff ID its config claims is never
// unpacked as that diff ID's snapshot: a hostile image cannot take over the
// base layer other images stand on.
//
// With the overlay driver, where the kernel mounts EROFS indexes, a layer
// is not unpacked but kept as its tar (an uncompressed one: its blob; a
// compressed one: its decompressed tar, written once) and an index: the
// same check holds there.
func TestEnsureChainRefusesLyingLayer(t *testing.T) {
	for _, driver := range []string{"copy", "overlay"} {
		for _, mt := range []types.MediaType{types.OCIUncompressedLayer, types.OCILayer, types.OCILayerZStd} {
			t.Run(driver+"/"+string(mt), func(t *testing.T) { testEnsureChainRefusesLyingLayer(t, driver, mt) })
		}
	}
}

func testEnsureChainRefusesLyingLayer(t *testing.T, driver string, mt types.MediaType) {
	ctx := context.Background()
	r, err := Open(t.TempDir(), WithSnapshotter(driver))
	if err != nil {
		t.Fatal(err)
	}
	base := layerTar(t, map[string]string{"bin/sh": "the real shell"})
	evil := layerTar(t, map[string]string{"bin/sh": "the attacker's shell"})
	baseID := diffIDOf(base)

	layers, _ := storeImageAs(t, r, mt, []v1.Hash{baseID}, evil)
	err = r.EnsureChain(ctx, []v1.Hash{baseID}, layers)
	if !errors.Is(err, snapshot.ErrDigestMismatch) {
		t.Fatalf("EnsureChain of a lying layer: %v, want ErrDigestMismatch", err)
	}
	if r.Snaps.Exists(ChainID([]v1.Hash{baseID})) {
		t.Fatal("the lying layer was installed as the base's snapshot")
	}

	// The genuine base then unpacks as itself.
	good, _ := storeImageAs(t, r, mt, []v1.Hash{baseID}, base)
	dir, release, err := r.View(ctx, []v1.Hash{baseID}, good, "view-test")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if b, err := os.ReadFile(filepath.Join(dir, "bin/sh")); err != nil || string(b) != "the real shell" {
		t.Fatalf("base /bin/sh = %q, %v", b, err)
	}
	indexed, _ := filepath.Glob(filepath.Join(r.Dir, "snapshots", "layers", "*", "layer.erofs"))
	if want := r.Snaps.Indexes(); (len(indexed) == 1) != want {
		t.Errorf("%d indexed layers, want the base indexed: %v", len(indexed), want)
	}
	if len(indexed) == 1 {
		// Its tar is the blob itself when that is the tar; a file of its
		// own (the only copy of the tar) when the blob is compressed.
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(filepath.Dir(indexed[0]), "layer.tar"), &st); err != nil {
			t.Fatal(err)
		}
		if linked := st.Nlink > 1; linked != (mt == types.OCIUncompressedLayer) {
			t.Errorf("layer tar has %d links for a %s blob", st.Nlink, mt)
		}
	}
}

// An image whose config lists fewer diff IDs than it has layers is an error,
// not a panic.
func TestEnsureChainLayerCountMismatch(t *testing.T) {
	r, err := Open(t.TempDir(), WithSnapshotter("copy"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := layerTar(t, map[string]string{"a": "a"}), layerTar(t, map[string]string{"b": "b"})
	layers, _ := storeImage(t, r, []v1.Hash{diffIDOf(a)}, a, b)
	if err := r.EnsureChain(context.Background(), []v1.Hash{diffIDOf(a)}, layers); err == nil {
		t.Fatal("EnsureChain accepted 2 layers with 1 diff ID")
	}
}
