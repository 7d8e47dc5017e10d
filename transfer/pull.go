package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/store"
)

// Pull fetches image ref from its registry into st and tags it with ref as
// given (store.NormalizeRef adds ":latest" to a bare name).
//
// A manifest list is resolved for the platform of WithPlatform (default
// linux/GOARCH). The image must pass the door every incoming image passes
// (see ErrInvalidImage): a manifest and config of known types, one diff ID
// per layer, no foreign layers. Layers whose blob st already has (by
// digest) are not fetched; the others are fetched in parallel (WithJobs),
// each streamed into the store and, in the same pass, decompressed and
// hashed: a blob is committed only if it hashes to its digest and size
// (else the error wraps ErrDigestMismatch) and its content to the diff ID
// the config claims at its position (else the image is refused, the error
// wraps ErrDigestMismatch). Layers already stored are checked against their
// claimed diff IDs as well. Only then are the config and the manifest
// stored and the image tagged, so a refused image leaves no tag and no
// index entry. A fetch that fails on the network (connection reset, an
// unexpected EOF, a 5xx answer) is tried again from the start, up to three
// times in all, after 1s and 3s (as go-containerregistry retries pushes).
//
// Layers keep the registry's bytes and media types (the builder
// decompresses gzip and zstd when it unpacks), and the manifest is stored
// byte for byte, so the stored manifest digest is the registry's.
// Credentials come from the docker config (authn.DefaultKeychain unless
// WithKeychain).
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
	var (
		mb []byte
		mt types.MediaType
	)
	err = c.retrying(ctx, "manifest", func() error {
		var err error
		mb, mt, err = fetchManifest(r, c.remoteOptions(ctx))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	m, err := checkManifest(mb, mt, ref)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	mdigest, _, _ := v1.SHA256(bytes.NewReader(mb))
	repo := r.Context()

	var cb []byte
	err = c.retrying(ctx, "config", func() error {
		if rc, err := st.OpenBlob(m.Config.Digest); err == nil {
			defer rc.Close()
			cb, err = io.ReadAll(io.LimitReader(rc, maxJSONSize+1))
			return err
		}
		rl, err := remote.Layer(repo.Digest(m.Config.Digest.String()), c.remoteOptions(ctx)...)
		if err != nil {
			return err
		}
		rc, err := rl.Compressed()
		if err != nil {
			return err
		}
		defer rc.Close()
		cb, err = io.ReadAll(io.LimitReader(rc, maxJSONSize+1))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pull %s: config: %w", ref, err)
	}
	cfg, err := checkConfig(m, cb, ref)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}

	c.printf("%s: Pulling from %s", r.Identifier(), repo.RepositoryStr())
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobs)
	seen := map[v1.Hash]bool{}
	fetched := 0
	for i, l := range m.Layers {
		if seen[l.Digest] {
			continue
		}
		seen[l.Digest] = true
		if st.HasBlob(l.Digest) {
			c.printf("%s: Already exists", shortHex(l.Digest))
			continue
		}
		fetched++
		want := cfg.RootFS.DiffIDs[i]
		g.Go(func() error {
			err := c.retrying(gctx, shortHex(l.Digest), func() error {
				return fetchLayer(gctx, st, repo, l, c.remoteOptions(gctx), func(res ingested) error {
					switch {
					case layerKinds[l.MediaType] == compression.None:
						return nil // its digest, checked, is its diff ID
					case res.DiffErr != nil:
						return refuse(ErrInvalidImage, "layer %d of %s: %v", i+1, ref, res.DiffErr)
					case res.DiffID != want:
						return diffIDMismatch(i, ref, res.DiffID, want)
					}
					return nil
				})
			})
			var rf *refusal
			switch {
			case errors.As(err, &rf):
				return fmt.Errorf("pull: %w", err)
			case err != nil:
				return fmt.Errorf("pull %s: layer %s: %w", ref, l.Digest, err)
			}
			c.printf("%s: Pull complete", shortHex(l.Digest))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := checkLayers(ctx, st, m, cfg, ref); err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	if !st.HasBlob(m.Config.Digest) {
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

// fetchManifest gets the manifest of image r (resolving an index for the
// platform in opts) as bytes with their media type.
func fetchManifest(r name.Reference, opts []remote.Option) ([]byte, types.MediaType, error) {
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return nil, "", err
	}
	switch {
	case desc.MediaType.IsSchema1():
		return nil, "", permanent(fmt.Errorf("schema 1 manifests are not supported"))
	case !desc.MediaType.IsIndex() && !desc.MediaType.IsImage():
		return nil, "", permanent(fmt.Errorf("%s is not an image", desc.MediaType))
	}
	rimg, err := desc.Image() // resolves an index for the platform
	if err != nil {
		return nil, "", err
	}
	mb, err := rimg.RawManifest()
	if err != nil {
		return nil, "", err
	}
	mt, err := rimg.MediaType()
	if err != nil {
		return nil, "", err
	}
	return mb, mt, nil
}

// fetchLayer streams layer l of repo into the store (see ingest; accept
// sees the result before it is committed).
func fetchLayer(ctx context.Context, st *store.Store, repo name.Repository, l v1.Descriptor, opts []remote.Option, accept func(ingested) error) error {
	rl, err := remote.Layer(repo.Digest(l.Digest.String()), opts...)
	if err != nil {
		return err
	}
	rc, err := rl.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = ingest(st, &ctxReader{ctx: ctx, r: rc}, &l, layerKinds[l.MediaType], accept)
	if err != nil && !errors.Is(err, ErrDigestMismatch) && strings.Contains(err.Error(), "error verifying") {
		// go-containerregistry's verifying reader caught it first; its
		// error type is internal.
		err = fmt.Errorf("%w: %v", ErrDigestMismatch, err)
	}
	return err
}
