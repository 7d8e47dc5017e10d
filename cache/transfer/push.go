package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/lbuild/lbuild/cache/store"
)

// Outgoing is an image as it leaves the machine: the manifest to send and
// the blobs it references, all stored in the store.
type Outgoing struct {
	Manifest  []byte
	MediaType types.MediaType
	Digest    v1.Hash
	Config    v1.Descriptor
	Layers    []v1.Descriptor
}

// Prepare returns img as it leaves the machine under compression comp:
// uncompressed layers are replaced by their compressed form (see
// Compressed; compressed at most once per layer and setting, in parallel,
// jobs at a time), everything else is kept. When no layer changes, the
// stored manifest bytes are returned unchanged, so its digest stays the
// same. onLayer, if not nil, is called for each layer as soon as it is
// ready, from the goroutine that prepared it (so up to jobs calls run at
// once, and work done in it overlaps with preparing other layers); an error
// from it stops Prepare.
func Prepare(ctx context.Context, st *store.Store, img *store.Image, comp Compression, jobs int, onLayer func(ctx context.Context, i int, d v1.Descriptor) error) (*Outgoing, error) {
	mb, err := rawManifest(st, img)
	if err != nil {
		return nil, err
	}
	var m v1.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("parse manifest %s: %w", img.Manifest.Digest, err)
	}
	mt := img.Manifest.MediaType
	if m.MediaType != "" {
		mt = m.MediaType
	}
	if jobs < 1 {
		jobs = DefaultJobs
	}
	layers := make([]v1.Descriptor, len(m.Layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for i, l := range m.Layers {
		g.Go(func() error {
			d, _, err := Compressed(gctx, st, l, comp)
			if err != nil {
				return err
			}
			layers[i] = d
			if onLayer != nil {
				return onLayer(gctx, i, d)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	changed := false
	for i := range layers {
		if layers[i].Digest != m.Layers[i].Digest {
			changed = true
		}
	}
	if changed {
		m.Layers = layers
		if mb, err = json.Marshal(&m); err != nil {
			return nil, fmt.Errorf("marshal manifest: %w", err)
		}
	}
	h, _, _ := v1.SHA256(bytes.NewReader(mb))
	return &Outgoing{Manifest: mb, MediaType: mt, Digest: h, Config: m.Config, Layers: layers}, nil
}

// rawTaggable is a manifest given as bytes, for remote.Pusher.Put.
type rawTaggable struct {
	b  []byte
	mt types.MediaType
}

func (r rawTaggable) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawTaggable) MediaType() (types.MediaType, error) { return r.mt, nil }

// Push sends img to the registry as ref and returns the manifest digest the
// registry now serves.
//
// Only blobs the registry lacks are uploaded: each is checked with a HEAD
// request first, and a blob that st knows to exist in another repository of
// the same registry (from an earlier pull or push) is mounted from there
// rather than uploaded. Uncompressed layers are compressed on the way out
// (WithCompression, gzip by default) once per layer and setting; see
// Compressed. Layers are prepared and uploaded in parallel (WithJobs), each
// streamed from its store file, so no layer is held in memory. Pulled layers
// keep their registry bytes, so pushing them back sends identical digests.
//
// Progress ("<id>: Pushed", "<id>: Layer already exists", the digest line)
// goes to WithProgress.
func Push(ctx context.Context, st *store.Store, img *store.Image, ref string, opts ...Opt) (v1.Hash, error) {
	c, err := newConfig(opts)
	if err != nil {
		return v1.Hash{}, err
	}
	r, err := c.parseRef(ref)
	if err != nil {
		return v1.Hash{}, err
	}
	repo := r.Context()
	base := c.transport
	if base == nil {
		base = remote.DefaultTransport
	}
	mounts := &mountRecorder{rt: base}
	pusher, err := remote.NewPusher(append(c.remoteOptions(ctx), remote.WithTransport(mounts))...)
	if err != nil {
		return v1.Hash{}, err
	}
	c.printf("The push refers to repository [%s]", repo.Name())

	// Each layer is compressed (if needed) and uploaded by one goroutine, so
	// compressing one layer overlaps with uploading another.
	var mu sync.Mutex
	shown := map[v1.Hash]bool{}
	upload := func(ctx context.Context, d v1.Descriptor, show bool) error {
		b := &storeBlob{st: st, desc: d}
		l, err := partial.CompressedToLayer(b)
		if err != nil {
			return err
		}
		src, canMount := mountSource(st, d.Digest, repo)
		if canMount {
			l = &remote.MountableLayer{Layer: l, Reference: src}
		}
		if err := pusher.Upload(ctx, repo, l); err != nil {
			return fmt.Errorf("blob %s: %w", d.Digest, err)
		}
		addSource(st, d.Digest, repo) // best effort
		mu.Lock()
		show = show && !shown[d.Digest]
		shown[d.Digest] = true
		mu.Unlock()
		if show {
			switch {
			case b.opened:
				c.printf("%s: Pushed", shortHex(d.Digest))
			case canMount && mounts.mounted(d.Digest):
				c.printf("%s: Mounted from %s", shortHex(d.Digest), src.Context().RepositoryStr())
			default:
				c.printf("%s: Layer already exists", shortHex(d.Digest))
			}
		}
		return nil
	}
	mb, err := rawManifest(st, img)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: parse manifest: %w", ref, err)
	}
	cfgDone := make(chan error, 1)
	go func() { cfgDone <- upload(ctx, m.Config, false) }()
	out, err := Prepare(ctx, st, img, c.compression, c.jobs, func(ctx context.Context, _ int, d v1.Descriptor) error {
		return upload(ctx, d, true)
	})
	cerr := <-cfgDone
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	if cerr != nil {
		return v1.Hash{}, fmt.Errorf("push %s: config: %w", ref, cerr)
	}
	if err := pusher.Put(ctx, r, rawTaggable{b: out.Manifest, mt: out.MediaType}); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: manifest: %w", ref, err)
	}
	tag := r.Identifier()
	if _, ok := r.(name.Digest); ok {
		tag = "digest"
	}
	c.printf("%s: digest: %s size: %d", tag, out.Digest, len(out.Manifest))
	return out.Digest, nil
}

// mountRecorder notes which blobs a registry mounted (201 Created in answer
// to POST .../blobs/uploads/?mount=DIGEST&from=REPO), so Push can say so.
type mountRecorder struct {
	rt http.RoundTripper
	m  sync.Map // digest string -> true
}

func (r *mountRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.rt.RoundTrip(req)
	if err == nil && req.Method == http.MethodPost && resp.StatusCode == http.StatusCreated {
		if d := req.URL.Query().Get("mount"); d != "" {
			r.m.Store(d, true)
		}
	}
	return resp, err
}

func (r *mountRecorder) mounted(h v1.Hash) bool {
	_, ok := r.m.Load(h.String())
	return ok
}
