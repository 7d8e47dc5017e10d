package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Verify checks every blob's content against its name and every index
// entry's manifest, config and layers against the blobs, and returns one
// line per problem. With repair, a corrupt blob is removed and an index
// entry whose image is incomplete is dropped (its blobs stay for GC), so
// the next build or pull makes them again.
func (s *Store) Verify(repair bool) ([]string, error) {
	var problems []string
	bdir := filepath.Join(s.dir, blobsDir, algo)
	ents, err := os.ReadDir(bdir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("verify: %w", err)
	}
	buf := make([]byte, 1<<20)
	for _, e := range ents {
		h := v1.Hash{Algorithm: algo, Hex: e.Name()}
		if validHash(h) != nil {
			continue
		}
		got, err := hashFile(filepath.Join(bdir, e.Name()), buf)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return problems, fmt.Errorf("verify blob %s: %w", h, err)
		}
		if got != h.Hex {
			problems = append(problems, fmt.Sprintf("blob %s: content has digest sha256:%s (corrupt)", h, got))
			if repair {
				if err := os.Remove(filepath.Join(bdir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return problems, err
				}
			}
		}
	}

	err = s.updateIndex(func(idx *v1.IndexManifest) (bool, error) {
		kept := idx.Manifests[:0:0]
		for _, d := range idx.Manifests {
			name := d.Digest.String()
			if ref := d.Annotations[AnnotationRefName]; ref != "" {
				name = ref
			}
			if why := s.incomplete(idx, d.Digest); why != "" {
				problems = append(problems, fmt.Sprintf("image %s: %s", name, why))
				continue
			}
			kept = append(kept, d)
		}
		changed := repair && len(kept) != len(idx.Manifests)
		if changed {
			idx.Manifests = kept
		}
		return changed, nil
	})
	return problems, err
}

// incomplete says why the image of manifest mh cannot be used ("" if it can).
func (s *Store) incomplete(idx *v1.IndexManifest, mh v1.Hash) string {
	img, err := s.image(idx, mh)
	if err != nil {
		return err.Error()
	}
	for _, l := range img.Layers {
		if !s.HasBlob(l.Digest) {
			return fmt.Sprintf("layer blob %s is missing", l.Digest)
		}
		if n, err := s.BlobSize(l.Digest); err == nil && n != l.Size {
			return fmt.Sprintf("layer blob %s has %d bytes, the manifest says %d", l.Digest, n, l.Size)
		}
	}
	return ""
}

func hashFile(p string, buf []byte) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
