package store

import (
	"bytes"
	"errors"
	"os"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Tag refuses an image with a blob missing (as a GC racing a pull could
// leave it), and Verify reports and repairs a corrupt blob.
func TestTagNeedsWholeImageAndVerify(t *testing.T) {
	s := newStore(t)
	layer := []byte("layer content")
	h, n, err := s.PutBlob(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{h}}}
	img, err := s.WriteImage(cfg, []v1.Descriptor{{MediaType: types.OCIUncompressedLayer, Digest: h, Size: n}})
	if err != nil {
		t.Fatal(err)
	}
	if probs, err := s.Verify(false); err != nil || len(probs) != 0 {
		t.Fatalf("Verify of a sound store: %v, %v", probs, err)
	}
	os.Chmod(s.BlobPath(h), 0o644)
	os.WriteFile(s.BlobPath(h), []byte("layer c0ntent"), 0o444)
	probs, err := s.Verify(true)
	if err != nil || len(probs) == 0 {
		t.Fatalf("Verify of a flipped byte: %v, %v", probs, err)
	}
	if s.HasBlob(h) {
		t.Fatal("Verify --repair kept the corrupt blob")
	}
	if err := s.Tag("app:1", img); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Tag of an image whose layer is gone: %v, want ErrNotFound", err)
	}
}
