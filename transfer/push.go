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

	"github.com/lbuild/lbuild/store"
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
	return prepare(ctx, st, img, jobs, func(ctx context.Context, i int, l v1.Descriptor) (v1.Descriptor, error) {
		d, _, err := Compressed(ctx, st, l, comp)
		if err != nil {
			return v1.Descriptor{}, err
		}
		if onLayer != nil {
			return d, onLayer(ctx, i, d)
		}
		return d, nil
	})
}

// prepare calls layer for each layer of img (in parallel, jobs at a time),
// which returns the descriptor the layer leaves the machine with, and
// builds the outgoing manifest from those.
func prepare(ctx context.Context, st *store.Store, img *store.Image, jobs int, layer func(ctx context.Context, i int, l v1.Descriptor) (v1.Descriptor, error)) (*Outgoing, error) {
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
			d, err := layer(gctx, i, l)
			if err != nil {
				return err
			}
			layers[i] = d
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
// (WithCompression, gzip by default) once per layer and setting: a layer
// whose compressed form is not remembered yet is compressed and uploaded in
// the same pass, the compressed bytes going to the registry (a streamed
// upload: POST, PATCH, PUT ?digest=) and into the store as they are
// produced; the store blob and the mapping (see Compressed) are kept only
// once the upload succeeded. A layer whose compressed form is remembered is
// uploaded from its store blob after the HEAD check. Layers move in
// parallel (WithJobs), and no layer is held in memory. Pulled layers keep
// their registry bytes, so pushing them back sends identical digests.
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
	report := func(h v1.Hash, format string, args ...any) {
		mu.Lock()
		seen := shown[h]
		shown[h] = true
		mu.Unlock()
		if !seen {
			c.printf("%s: "+format, append([]any{shortHex(h)}, args...)...)
		}
	}
	// upload sends a stored blob the registry may already have.
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
		if show {
			switch {
			case b.opened:
				report(d.Digest, "Pushed")
			case canMount && mounts.mounted(d.Digest):
				report(d.Digest, "Mounted from %s", src.Context().RepositoryStr())
			default:
				report(d.Digest, "Layer already exists")
			}
		}
		return nil
	}
	// layer sends one layer: one whose compressed form is still to be made
	// is compressed and uploaded in the same pass (streamCompressed), any
	// other is sent from its store blob.
	layer := func(ctx context.Context, _ int, l v1.Descriptor) (v1.Descriptor, error) {
		d, sent, err := streamCompressed(ctx, st, l, c.compression, func(sl v1.Layer) error {
			if err := pusher.Upload(ctx, repo, sl); err != nil {
				return fmt.Errorf("layer %s: %w", l.Digest, err)
			}
			// Reported here, before another goroutine waiting for this
			// layer's compression can report it as existing.
			if h, err := sl.Digest(); err == nil {
				addSource(st, h, repo) // best effort
				report(h, "Pushed")
			}
			return nil
		})
		if err != nil {
			return v1.Descriptor{}, err
		}
		if sent {
			return d, nil
		}
		return d, upload(ctx, d, true)
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
	out, err := prepare(ctx, st, img, c.jobs, layer)
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
