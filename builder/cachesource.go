package builder

import (
	"context"
	"errors"
	"fmt"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/store"
)

// CacheSource is a build cache imported from elsewhere (--cache-from: a
// cache dir or a registry), asked for the steps the store root's own cache
// misses. It is lazy: a hit costs a lookup; layer blobs move into the store
// only when the build needs them (FetchLayer), and a cache mount is filled
// only when a RUN first uses it (SeedMount). Its methods are safe for
// concurrent use.
type CacheSource interface {
	// Record returns the record cached under key, or nil.
	Record(key cache.Key) *cache.Record
	// HasLayer reports whether the source holds the layer with diffID.
	HasLayer(diffID v1.Hash) bool
	// FetchLayer stores the layer with diffID in st as an uncompressed tar
	// whose digest is diffID, verified; a layer st already holds is left
	// alone. A missing or corrupt source blob is an error and stores
	// nothing.
	FetchLayer(ctx context.Context, st *store.Store, diffID v1.Hash) error
	// SeedMount fills dir, the freshly created empty directory of RUN cache
	// mount id, with the contents the source holds for id (nothing if it
	// holds none).
	SeedMount(ctx context.Context, id, dir string) error
}

// hasLayer reports whether the layer with diffID h is in the store or can
// be fetched from --cache-from.
func (b *build) hasLayer(h v1.Hash) bool {
	if b.root.Store.HasBlob(h) {
		return true
	}
	return b.opts.CacheFrom != nil && b.opts.CacheFrom.HasLayer(h)
}

// record returns the record of key from the store root's cache or, when
// that has none usable, from --cache-from; fits (nil: any) is asked last,
// of a record usable otherwise. A record found but not usable is returned
// with an error wrapping cache.ErrNotFound.
func (b *build) record(key cache.Key, layer bool, fits func(*cache.Record) bool) (*cache.Record, error) {
	ok := func(r *cache.Record) bool { return b.usable(r, layer) && (fits == nil || fits(r)) }
	rec, err := b.root.Records.Get(key)
	if err == nil && ok(rec) {
		return rec, nil
	}
	if b.opts.CacheFrom != nil {
		if r := b.opts.CacheFrom.Record(key); r != nil && ok(r) {
			// Kept in the root's cache too, so a later build without
			// --cache-from finds it (once the layer is in the store).
			if err := b.root.Records.Put(r); err != nil {
				logrus.Debugf("keep imported record %s: %v", key, err)
			}
			return r, nil
		}
	}
	if err == nil {
		return nil, fmt.Errorf("record %s cannot be used here: %w", key, cache.ErrNotFound)
	}
	return nil, err
}

// needLayers makes sure the store holds the blobs of layers, fetching those
// it lacks from --cache-from: called where a step needs a filesystem and
// where the result image is written.
func (b *build) needLayers(ctx context.Context, layers []v1.Descriptor) error {
	for _, l := range layers {
		if b.root.Store.HasBlob(l.Digest) {
			continue
		}
		if b.opts.CacheFrom == nil || !b.opts.CacheFrom.HasLayer(l.Digest) {
			continue // the store reports it missing
		}
		if err := b.opts.CacheFrom.FetchLayer(ctx, b.root.Store, l.Digest); err != nil {
			return fmt.Errorf("layer %s from --cache-from: %w", l.Digest, err)
		}
	}
	return nil
}

// noteRecord remembers that the build ran or reused rec (Result.Records).
func (b *build) noteRecord(rec *cache.Record) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.records = append(b.records, rec)
}

// noteMount remembers that the build used RUN cache mount id at dir
// (Result.CacheMounts).
func (b *build) noteMount(id, dir string) {
	b.mountsMu.Lock()
	defer b.mountsMu.Unlock()
	if b.mounts == nil {
		b.mounts = map[string]string{}
	}
	b.mounts[id] = dir
}

// errCacheLayer marks a --cache-from layer that could not be fetched: Build
// runs again without it.
var errCacheLayer = errors.New("a layer of --cache-from cannot be used")

// guardedSource remembers the layers of a CacheSource whose fetch failed,
// so that a build run again after one treats their steps as misses.
type guardedSource struct {
	CacheSource
	mu  sync.Mutex
	bad map[v1.Hash]bool
}

// HasLayer implements CacheSource.
func (g *guardedSource) HasLayer(h v1.Hash) bool {
	g.mu.Lock()
	bad := g.bad[h]
	g.mu.Unlock()
	return !bad && g.CacheSource.HasLayer(h)
}

// FetchLayer implements CacheSource.
func (g *guardedSource) FetchLayer(ctx context.Context, st *store.Store, h v1.Hash) error {
	err := g.CacheSource.FetchLayer(ctx, st, h)
	if err == nil || ctx.Err() != nil {
		return err
	}
	g.mu.Lock()
	g.bad[h] = true
	g.mu.Unlock()
	return fmt.Errorf("%w (%v)", errCacheLayer, err)
}
