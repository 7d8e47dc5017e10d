package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/lbuild/lbuild/store"
)

// Artifact is a manifest that is not an image (such as lbuild's build-cache
// manifest) as it moves to or from a registry: the manifest bytes as
// served, its media type, and its config blob's bytes.
type Artifact struct {
	Manifest  []byte
	MediaType types.MediaType
	Digest    v1.Hash
	Config    []byte
}

// FetchArtifact reads the manifest tagged ref and its config blob (at most
// 64 MiB, checked against its digest). A ref the registry does not have is
// an error wrapping store.ErrNotFound.
func FetchArtifact(ctx context.Context, ref string, opts ...Opt) (*Artifact, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	r, err := c.parseRef(ref)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(r, c.remoteOptions(ctx)...)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%s: %w", ref, store.ErrNotFound)
		}
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	if m.Config.Size > 64<<20 {
		return nil, fmt.Errorf("config blob of %d bytes is too big", m.Config.Size)
	}
	rc, err := OpenRemoteBlob(ctx, ref, m.Config.Digest, opts...)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer rc.Close()
	cb, err := io.ReadAll(io.LimitReader(rc, m.Config.Size+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if h, _, _ := v1.SHA256(bytes.NewReader(cb)); h != m.Config.Digest || int64(len(cb)) != m.Config.Size {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, ErrDigestMismatch)
	}
	return &Artifact{Manifest: desc.Manifest, MediaType: desc.MediaType, Digest: desc.Digest, Config: cb}, nil
}

// OpenRemoteBlob opens blob h of the repository of ref for reading; the
// caller must Close it. The reader fails at its end if the bytes do not
// hash to h.
func OpenRemoteBlob(ctx context.Context, ref string, h v1.Hash, opts ...Opt) (io.ReadCloser, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	r, err := c.parseRef(ref)
	if err != nil {
		return nil, err
	}
	l, err := remote.Layer(r.Context().Digest(h.String()), c.remoteOptions(ctx)...)
	if err != nil {
		return nil, err
	}
	return l.Compressed()
}

// PushArtifact uploads blobs and then puts the manifest mb (media type mt)
// as ref, byte for byte. Each blob is sent from the store when the
// registry lacks it (a HEAD request first, a cross-repository mount where
// the store knows another repository holding it); a blob the store does not
// hold must already be in the repository (it is not checked: the registry
// refuses a manifest that references a blob it lacks). It returns the
// number of blobs actually uploaded.
func PushArtifact(ctx context.Context, st *store.Store, ref string, mb []byte, mt types.MediaType, blobs []v1.Descriptor, opts ...Opt) (int, error) {
	c, err := newConfig(opts)
	if err != nil {
		return 0, err
	}
	r, err := c.parseRef(ref)
	if err != nil {
		return 0, err
	}
	repo := r.Context()
	base := c.transport
	if base == nil {
		base = remote.DefaultTransport
	}
	pusher, err := remote.NewPusher(append(c.remoteOptions(ctx), remote.WithTransport(&mountRecorder{rt: base}))...)
	if err != nil {
		return 0, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobs)
	sent := make([]bool, len(blobs))
	for i, d := range blobs {
		if !st.HasBlob(d.Digest) {
			continue
		}
		g.Go(func() error {
			b := &storeBlob{st: st, desc: d}
			l, err := partial.CompressedToLayer(b)
			if err != nil {
				return err
			}
			if src, ok := mountSource(st, d.Digest, repo); ok {
				l = &remote.MountableLayer{Layer: l, Reference: src}
			}
			if err := pusher.Upload(gctx, repo, l); err != nil {
				return fmt.Errorf("blob %s: %w", d.Digest, err)
			}
			addSource(st, d.Digest, repo) // best effort
			sent[i] = b.opened
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	if err := pusher.Put(ctx, r, rawTaggable{b: mb, mt: mt}); err != nil {
		return 0, fmt.Errorf("manifest: %w", err)
	}
	n := 0
	for _, s := range sent {
		if s {
			n++
		}
	}
	return n, nil
}
