package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"

	"github.com/lbuild/lbuild/store"
)

// Pull fetches image ref from its registry into st and tags it with ref as
// given (store.NormalizeRef adds ":latest" to a bare name).
//
// A manifest list is resolved for the platform of WithPlatform (default
// linux/GOARCH). Layers whose blob st already has (by digest) are not
// fetched; the others are fetched in parallel (WithJobs), each streamed into
// the store and committed only if it hashes to its digest, otherwise
// nothing is stored and the error wraps ErrDigestMismatch. Layers keep the
// registry's bytes and media types (the builder decompresses gzip and zstd
// when it unpacks), and the manifest is stored byte for byte, so the stored
// manifest digest is the registry's. Credentials come from the docker config
// (authn.DefaultKeychain unless WithKeychain).
//
// Progress, as docker prints it, goes to WithProgress.
func Pull(ctx context.Context, st *store.Store, ref string, opts ...Opt) (*store.Image, error) {
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
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	switch {
	case desc.MediaType.IsSchema1():
		return nil, fmt.Errorf("pull %s: schema 1 manifests are not supported", ref)
	case !desc.MediaType.IsIndex() && !desc.MediaType.IsImage():
		return nil, fmt.Errorf("pull %s: %s is not an image", ref, desc.MediaType)
	}
	rimg, err := desc.Image() // resolves an index for c.platform
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	mb, err := rimg.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	mt, err := rimg.MediaType()
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if !mt.IsImage() {
		return nil, fmt.Errorf("pull %s: %s is not an image manifest", ref, mt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("pull %s: parse manifest: %w", ref, err)
	}
	mdigest, _, _ := v1.SHA256(bytes.NewReader(mb))

	c.printf("%s: Pulling from %s", r.Identifier(), r.Context().RepositoryStr())
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobs)
	seen := map[v1.Hash]bool{}
	fetched := 0
	for _, l := range m.Layers {
		if seen[l.Digest] {
			continue
		}
		seen[l.Digest] = true
		if st.HasBlob(l.Digest) {
			c.printf("%s: Already exists", shortHex(l.Digest))
			continue
		}
		if len(l.URLs) > 0 || !l.MediaType.IsDistributable() {
			// Foreign layers: remote fetches them from their URLs.
			c.printf("%s: Pulling foreign layer", shortHex(l.Digest))
		}
		fetched++
		l := l
		g.Go(func() error {
			if err := fetchBlob(gctx, st, rimg, l); err != nil {
				return fmt.Errorf("pull %s: layer %s: %w", ref, l.Digest, err)
			}
			c.printf("%s: Pull complete", shortHex(l.Digest))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if !st.HasBlob(m.Config.Digest) {
		cb, err := rimg.RawConfigFile()
		if err != nil {
			return nil, fmt.Errorf("pull %s: config: %w", ref, err)
		}
		if err := putVerified(st, bytes.NewReader(cb), m.Config); err != nil {
			return nil, fmt.Errorf("pull %s: config: %w", ref, err)
		}
		fetched++
	}
	hadManifest := st.HasBlob(mdigest)
	img, err := putManifest(st, mb, mt, []string{ref})
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	repo := r.Context()
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		addSource(st, d.Digest, repo) // best effort: only speeds up later pushes
	}
	c.printf("Digest: %s", img.Manifest.Digest)
	if fetched == 0 && hadManifest {
		c.printf("Status: Image is up to date for %s", ref)
	} else {
		c.printf("Status: Downloaded newer image for %s", ref)
	}
	return img, nil
}

// fetchBlob streams layer l of rimg into the store, verified.
func fetchBlob(ctx context.Context, st *store.Store, rimg v1.Image, l v1.Descriptor) error {
	rl, err := rimg.LayerByDigest(l.Digest)
	if err != nil {
		return err
	}
	rc, err := rl.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	err = putVerified(st, &ctxReader{ctx: ctx, r: rc}, l)
	if err != nil && !errors.Is(err, ErrDigestMismatch) && strings.Contains(err.Error(), "error verifying") {
		// go-containerregistry's verifying reader caught it first; its
		// error type is internal.
		err = fmt.Errorf("%w: %v", ErrDigestMismatch, err)
	}
	return err
}
