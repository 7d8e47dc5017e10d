package transfer

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/store"
)

// putVerified streams r into the store and commits it only if it hashes to
// want (and has size want.Size when that is > 0). On a mismatch nothing is
// stored and the error wraps ErrDigestMismatch.
func putVerified(st *store.Store, r io.Reader, want v1.Descriptor) error {
	_, err := ingest(st, r, &want, compression.None, nil)
	return err
}

// putBytes stores b and returns its descriptor with media type mt.
func putBytes(st *store.Store, b []byte, mt types.MediaType) (v1.Descriptor, error) {
	h, n, err := st.PutBlob(bytes.NewReader(b))
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}, nil
}

// putManifest stores the manifest bytes mb exactly as given (so its digest is
// the one a registry or archive announced), checks that its config and
// layers are stored, and tags it with each ref. It returns the stored image.
//
// store.WriteImage cannot do this: it marshals the config and the manifest
// itself. An image put here without refs is readable with st.Image but not
// listed and is garbage for GC.
func putManifest(st *store.Store, mb []byte, mt types.MediaType, refs []string) (*store.Image, error) {
	if !mt.IsImage() {
		return nil, fmt.Errorf("media type %s is not an image manifest", mt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if !st.HasBlob(d.Digest) {
			return nil, fmt.Errorf("manifest references blob %s: %w", d.Digest, store.ErrNotFound)
		}
	}
	desc, err := putBytes(st, mb, mt)
	if err != nil {
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	for _, ref := range refs {
		if err := st.Tag(ref, &store.Image{Manifest: desc}); err != nil {
			return nil, err
		}
	}
	return st.Image(desc.Digest)
}

// rawManifest reads the manifest bytes of img from the store.
func rawManifest(st *store.Store, img *store.Image) ([]byte, error) {
	rc, err := st.OpenBlob(img.Manifest.Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, 8<<20))
}

// storeBlob is a store blob seen as a go-containerregistry layer, for
// remote's uploader. Compressed notes that it was opened, which is how Push
// tells an uploaded blob from one the registry already had.
type storeBlob struct {
	st     *store.Store
	desc   v1.Descriptor
	opened bool
}

func (b *storeBlob) Digest() (v1.Hash, error)            { return b.desc.Digest, nil }
func (b *storeBlob) Size() (int64, error)                { return b.desc.Size, nil }
func (b *storeBlob) MediaType() (types.MediaType, error) { return b.desc.MediaType, nil }
func (b *storeBlob) Compressed() (io.ReadCloser, error) {
	b.opened = true
	return openBlob(b.st, b.desc.Digest)
}

var _ partial.CompressedLayer = (*storeBlob)(nil)

// metaSources is the store metadata kind that records, per blob (keyed by
// its digest's hex), the repositories ("registry/repo") where it is known to
// exist, one a line, newest first, so Push can ask a registry to mount it
// from another of its repositories instead of uploading it.
const metaSources = "sources"

func readSources(st *store.Store, h v1.Hash) []string {
	b, err := st.Meta(metaSources, h.Hex)
	if err != nil {
		return nil
	}
	return strings.Fields(string(b))
}

// addSource records repo for blob h. Concurrent writers may lose each
// other's lines, which costs a mount, never correctness.
func addSource(st *store.Store, h v1.Hash, repo name.Repository) error {
	srcs := readSources(st, h)
	r := repo.Name()
	for _, s := range srcs {
		if s == r {
			return nil
		}
	}
	srcs = append([]string{r}, srcs...)
	if len(srcs) > 16 {
		srcs = srcs[:16]
	}
	return st.SetMeta(metaSources, h.Hex, []byte(strings.Join(srcs, "\n")+"\n"))
}

// mountSource returns a reference in another repository of the same
// registry as repo that holds blob h, if one is known.
func mountSource(st *store.Store, h v1.Hash, repo name.Repository) (name.Reference, bool) {
	for _, s := range readSources(st, h) {
		var opts []name.Option
		if repo.Scheme() == "http" {
			opts = append(opts, name.Insecure)
		}
		src, err := name.NewRepository(s, opts...)
		if err != nil || src.Name() == repo.Name() || src.RegistryStr() != repo.RegistryStr() {
			continue
		}
		return src.Digest(h.String()), true
	}
	return nil, false
}
