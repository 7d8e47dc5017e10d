package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
)

// ggcrValidate is go-containerregistry's validate.Image when the tests are
// built with -tags validate. That package imports github.com/google/go-cmp,
// which go.mod does not list, so it is opt-in:
//
//	cp go.mod /tmp/v.mod; cp go.sum /tmp/v.sum
//	go test -tags validate -modfile=/tmp/v.mod ./store/
var ggcrValidate func(v1.Image) error

// validateImage checks what validate.Image checks that matters for a
// layout we wrote: the manifest and config digests and sizes, every layer's
// digest and size against the manifest and its uncompressed digest against
// the config's diff IDs.
func validateImage(t testing.TB, img v1.Image) error {
	t.Helper()
	if ggcrValidate != nil {
		if err := ggcrValidate(img); err != nil {
			return fmt.Errorf("go-containerregistry validate: %w", err)
		}
	}
	rawM, err := img.RawManifest()
	if err != nil {
		return err
	}
	if d, _ := img.Digest(); d != sha(rawM) {
		return fmt.Errorf("manifest digest %v != sha256 of manifest", d)
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	rawC, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if m.Config.Digest != sha(rawC) || m.Config.Size != int64(len(rawC)) {
		return fmt.Errorf("config descriptor %+v does not match config blob", m.Config)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	if len(layers) != len(m.Layers) || len(layers) != len(cfg.RootFS.DiffIDs) {
		return fmt.Errorf("%d layers, %d manifest layers, %d diff ids", len(layers), len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return err
		}
		got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
		if got != m.Layers[i].Digest || n != m.Layers[i].Size {
			return fmt.Errorf("layer %d: blob %v/%d, manifest %v/%d", i, got, n, m.Layers[i].Digest, m.Layers[i].Size)
		}
		rc, err = l.Uncompressed()
		if err != nil {
			return err
		}
		h.Reset()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return err
		}
		diff := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
		if diff != cfg.RootFS.DiffIDs[i] {
			return fmt.Errorf("layer %d: uncompressed %v, diff id %v", i, diff, cfg.RootFS.DiffIDs[i])
		}
	}
	if _, err := partial.Descriptor(img); err != nil {
		return err
	}
	return nil
}
