package remotecache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/fsx"
	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/transfer"
)

// Build is what a finished build leaves to export.
type Build struct {
	Records []*cache.Record   // every step the build ran or reused, in order
	Mounts  map[string]string // RUN cache mounts it used: id -> directory
	// Manifests, when not nil, holds the records' input manifests, which
	// are exported with them (for --explain on another machine).
	Manifests *cache.Manifests
}

// inputBlobs returns the blobs of rec's input manifest in b.Manifests (the
// manifest, then its file list), as (descriptor, path) pairs; none when
// the record has no manifest or the store lacks it.
func inputBlobs(b Build, rec *cache.Record) ([]v1.Descriptor, []string) {
	if b.Manifests == nil || rec.Manifest == "" {
		return nil, nil
	}
	man, err := b.Manifests.Get(rec.Manifest)
	if err != nil {
		return nil, nil
	}
	var ds []v1.Descriptor
	var ps []string
	for _, d := range []string{rec.Manifest, man.Files} {
		if d == "" {
			continue
		}
		p, err := b.Manifests.BlobPath(d)
		if err != nil {
			return nil, nil
		}
		fi, err := os.Stat(p)
		h, herr := v1.NewHash(d)
		if err != nil || herr != nil {
			return nil, nil
		}
		ds = append(ds, v1.Descriptor{MediaType: InputsMediaType, Digest: h, Size: fi.Size()})
		ps = append(ps, p)
	}
	return ds, ps
}

// Stats tells what an export did.
type Stats struct {
	Entries  int // entries in the exported cache
	Mounts   int // cache mounts in it
	Size     int64
	Uploaded int // blobs uploaded (registry) or written (dir)
}

// Export writes the cache of build b to spec: b's entries (and, with
// spec.Mounts, its cache mounts) first, then the most recently used
// entries of the cache already there while the total stays under
// spec.MaxSize. Layer blobs come from st; one st lacks is fetched from src
// (the build's --cache-from, may be nil) first. warn gets one-line notes
// (an unreadable old cache is replaced).
//
// A cache dir is written under an exclusive lock on DIR/.lock, blobs first,
// index.json last and atomically, then unreferenced blobs are removed: a
// concurrent export waits, and one killed midway leaves the previous cache
// readable. A registry cache is pushed blobs first (each only if the
// registry lacks it), manifest last; concurrent exports to one ref each
// push a complete cache and the last one stays.
func Export(ctx context.Context, st *store.Store, src *Source, b Build, spec Spec, warn func(string), topts ...transfer.Opt) (Stats, error) {
	if spec.MaxSize <= 0 {
		spec.MaxSize = DefaultMaxSize
	}
	if spec.Type == "local" {
		return exportLocal(ctx, st, src, b, spec, warn)
	}
	return exportRegistry(ctx, st, src, b, spec, warn, topts)
}

// ensureStored makes sure st holds the layer of rec and returns its
// uncompressed descriptor.
func ensureStored(ctx context.Context, st *store.Store, src *Source, rec *cache.Record) (v1.Descriptor, error) {
	h, err := v1.NewHash(rec.DiffID)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if !st.HasBlob(h) {
		if _, ok := src.layer(h); !ok {
			return v1.Descriptor{}, fmt.Errorf("layer %s of step %q: %w", h, rec.CreatedBy, store.ErrNotFound)
		}
		if err := src.FetchLayer(ctx, st, h); err != nil {
			return v1.Descriptor{}, err
		}
	}
	n, err := st.BlobSize(h)
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: layerMediaType, Digest: h, Size: n}, nil
}

func exportLocal(ctx context.Context, st *store.Store, src *Source, b Build, spec Spec, warn func(string)) (Stats, error) {
	dir := spec.Dir
	bdir := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		return Stats{}, err
	}
	// The lock file is world-readable: a CI runner's cache step (tar, as
	// a user other than the one running lbuild) must be able to save it.
	lockPath := filepath.Join(dir, ".lock")
	if f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDONLY, 0o644); err == nil {
		f.Close()
	}
	unlock, err := fsx.LockFunc(lockPath)
	if err != nil {
		return Stats{}, err
	}
	defer unlock()
	// Holding the lock, every temp file is a killed export's leftover.
	if stale, _ := filepath.Glob(filepath.Join(dir, ".tmp-*")); len(stale) > 0 {
		for _, p := range stale {
			os.Remove(p)
		}
	}
	var stats Stats
	prev, err := readLocalChecked(dir, func(n int) {
		warn(fmt.Sprintf("--cache-to %s: dropping %d entries whose layer blobs are missing or truncated", dir, n))
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		warn(fmt.Sprintf("--cache-to %s: replacing an unreadable cache: %v", dir, err))
	}
	cur := &Config{Version: configVersion}
	for _, rec := range b.Records {
		e := Entry{Record: *rec}
		if rec.DiffID != "" {
			h, err := v1.NewHash(rec.DiffID)
			if err != nil {
				return Stats{}, err
			}
			// A layer the dir holds already (--cache-dir: every hit) is
			// kept as it is, without bringing it into the store.
			d := v1.Descriptor{MediaType: layerMediaType, Digest: h, Size: rec.Size}
			if fi, err := os.Stat(blobPath(dir, h)); err != nil || fi.Size() != rec.Size || rec.Size == 0 {
				if d, err = ensureStored(ctx, st, src, rec); err != nil {
					return Stats{}, err
				}
				dst := blobPath(dir, d.Digest)
				if fi, err := os.Stat(dst); err != nil || fi.Size() != d.Size {
					if err := linkOrCopy(st.BlobPath(d.Digest), dst); err != nil {
						return Stats{}, err
					}
					stats.Uploaded++
				}
			}
			e.Layer = &d
		}
		ds, ps := inputBlobs(b, rec)
		for i, d := range ds {
			if fi, err := os.Stat(blobPath(dir, d.Digest)); err == nil && fi.Size() == d.Size {
				continue
			}
			if err := linkOrCopy(ps[i], blobPath(dir, d.Digest)); err != nil {
				return Stats{}, err
			}
		}
		e.Inputs = ds
		cur.Entries = append(cur.Entries, e)
	}
	if spec.Mounts {
		for _, id := range sortedKeys(b.Mounts) {
			d, written, err := writeBlob(bdir, func(w io.Writer) error { return writeMountTar(b.Mounts[id], w) })
			if err != nil {
				return Stats{}, fmt.Errorf("cache mount %s: %w", id, err)
			}
			if written {
				stats.Uploaded++
			}
			d.MediaType = MountMediaType
			cur.Mounts = append(cur.Mounts, Mount{ID: id, Blob: d})
		}
	}
	merged, cb, cfgDesc, mb, err := seal(cur, prev, spec.MaxSize)
	if err != nil {
		return Stats{}, err
	}
	for _, blob := range [][]byte{cb, mb} {
		if _, _, err := writeBlob(bdir, func(w io.Writer) error { _, err := w.Write(blob); return err }); err != nil {
			return Stats{}, err
		}
	}
	if err := fsx.SyncDir(bdir); err != nil {
		return Stats{}, err
	}
	mh, _, _ := v1.SHA256(bytes.NewReader(mb))
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{{
		MediaType: types.OCIManifestSchema1, Digest: mh, Size: int64(len(mb)), ArtifactType: ArtifactType,
		Annotations: map[string]string{store.AnnotationRefName: "lbuild-cache"},
	}}}
	ib, err := json.Marshal(&idx)
	if err != nil {
		return Stats{}, err
	}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		if err := fsx.WriteFile(filepath.Join(dir, "oci-layout"), dir, []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
			return Stats{}, err
		}
	}
	if err := fsx.WriteFile(filepath.Join(dir, "index.json"), dir, ib, 0o644); err != nil {
		return Stats{}, err
	}
	// The new cache is in place: what it does not reference goes.
	keep := map[string]bool{cfgDesc.Digest.Hex: true, mh.Hex: true}
	for _, d := range blobsOf(merged) {
		keep[d.Digest.Hex] = true
		stats.Size += d.Size
	}
	ents, err := os.ReadDir(bdir)
	if err != nil {
		return Stats{}, err
	}
	for _, e := range ents {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(bdir, e.Name()))
		}
	}
	stats.Entries, stats.Mounts = len(merged.Entries), len(merged.Mounts)
	return stats, nil
}

// linkOrCopy puts the file src at dst: a hard link, or a copy (through a
// synced temp file and a rename) across filesystems.
func linkOrCopy(src, dst string) error {
	err := os.Link(src, dst)
	if errors.Is(err, fs.ErrExist) {
		// Only a blob of the wrong size is replaced (see exportLocal).
		os.Remove(dst)
		err = os.Link(src, dst)
	}
	if err == nil {
		return nil
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	_, _, err = writeBlob(filepath.Dir(dst), func(w io.Writer) error {
		_, err := io.CopyBuffer(w, f, make([]byte, 1<<20))
		return err
	})
	return err
}

// writeBlob writes what fill writes into dir (a blobs/sha256 directory) as
// a blob named by its digest, through a synced temp file and a rename. It
// reports whether the blob was new.
func writeBlob(dir string, fill func(io.Writer) error) (v1.Descriptor, bool, error) {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return v1.Descriptor{}, false, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	var n countWriter
	if err := fill(io.MultiWriter(f, h, &n)); err != nil {
		return v1.Descriptor{}, false, err
	}
	if err := f.Chmod(0o444); err != nil {
		return v1.Descriptor{}, false, err
	}
	if err := f.Sync(); err != nil {
		return v1.Descriptor{}, false, err
	}
	d := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}, Size: int64(n)}
	dst := filepath.Join(dir, d.Digest.Hex)
	if fi, err := os.Stat(dst); err == nil && fi.Size() == d.Size {
		return d, false, nil
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return v1.Descriptor{}, false, err
	}
	return d, true, nil
}

type countWriter int64

func (w *countWriter) Write(p []byte) (int, error) {
	*w += countWriter(len(p))
	return len(p), nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func exportRegistry(ctx context.Context, st *store.Store, src *Source, b Build, spec Spec, warn func(string), topts []transfer.Opt) (Stats, error) {
	repo, err := repoOf(spec.Ref)
	if err != nil {
		return Stats{}, err
	}
	prev, err := readRegistry(ctx, spec.Ref, topts)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		warn(fmt.Sprintf("--cache-to %s: replacing an unreadable cache: %v", spec.Ref, err))
		prev = nil
	}
	// Layers this repository already holds, by diff ID: the old cache's,
	// and those imported from a cache in the same repository.
	there := map[string]v1.Descriptor{}
	if prev != nil {
		for _, e := range prev.Entries {
			if e.Layer != nil {
				there[e.DiffID] = *e.Layer
			}
		}
	}
	cur := &Config{Version: configVersion}
	for _, rec := range b.Records {
		e := Entry{Record: *rec}
		if rec.DiffID != "" {
			d, ok := there[rec.DiffID]
			if !ok {
				h, _ := v1.NewHash(rec.DiffID)
				if la, found := src.layer(h); found && la.o.spec.Type == "registry" && sameRepo(la.o.spec.Ref, repo) {
					d, ok = la.desc, true
				}
			}
			if !ok {
				u, err := ensureStored(ctx, st, src, rec)
				if err != nil {
					return Stats{}, err
				}
				if d, _, err = transfer.Compressed(ctx, st, u, transfer.Compression{Algorithm: transfer.Gzip}); err != nil {
					return Stats{}, err
				}
			}
			d = v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
			e.Layer = &d
		}
		ds, ps := inputBlobs(b, rec)
		for i := range ds {
			f, err := os.Open(ps[i])
			if err != nil {
				return Stats{}, err
			}
			_, _, err = st.PutBlob(f)
			f.Close()
			if err != nil {
				return Stats{}, err
			}
		}
		e.Inputs = ds
		cur.Entries = append(cur.Entries, e)
	}
	if spec.Mounts {
		for _, id := range sortedKeys(b.Mounts) {
			w, err := st.Writer()
			if err != nil {
				return Stats{}, err
			}
			err = writeMountTar(b.Mounts[id], w)
			var h v1.Hash
			var n int64
			if err == nil {
				h, n, err = w.Commit()
			}
			w.Close()
			if err != nil {
				return Stats{}, fmt.Errorf("cache mount %s: %w", id, err)
			}
			cur.Mounts = append(cur.Mounts, Mount{ID: id, Blob: v1.Descriptor{MediaType: MountMediaType, Digest: h, Size: n}})
		}
	}
	merged, cb, cfgDesc, mb, err := seal(cur, prev, spec.MaxSize)
	if err != nil {
		return Stats{}, err
	}
	if _, _, err := st.PutBlob(bytes.NewReader(cb)); err != nil {
		return Stats{}, err
	}
	blobs := append([]v1.Descriptor{cfgDesc}, blobsOf(merged)...)
	// Another runner may be exporting to the same ref this very moment: a
	// registry can answer one of two concurrent uploads of the same blob
	// with an error. Every step of a push is idempotent (blobs it finds
	// there are skipped), so try it again.
	var n int
	for attempt := 1; ; attempt++ {
		n, err = transfer.PushArtifact(ctx, st, spec.Ref, mb, types.OCIManifestSchema1, blobs, topts...)
		if err == nil || attempt == pushTries || ctx.Err() != nil {
			break
		}
		warn(fmt.Sprintf("--cache-to %s: %v; trying again", spec.Ref, err))
		time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
	}
	if err != nil {
		return Stats{}, err
	}
	stats := Stats{Entries: len(merged.Entries), Mounts: len(merged.Mounts), Uploaded: n}
	for _, d := range blobs[1:] {
		stats.Size += d.Size
	}
	return stats, nil
}

// seal merges the build's config cur with the previous cache's under max
// and returns the merged config, its bytes, their descriptor and the cache
// manifest over them: what both kinds of export write.
func seal(cur, prev *Config, max int64) (*Config, []byte, v1.Descriptor, []byte, error) {
	merged := merge(cur, prev, max)
	cb, err := json.Marshal(merged)
	if err != nil {
		return nil, nil, v1.Descriptor{}, nil, err
	}
	cfgDesc, mb, err := manifest(cb, blobsOf(merged))
	return merged, cb, cfgDesc, mb, err
}

// pushTries bounds the attempts to push a cache manifest and its blobs.
const pushTries = 3

// repoOf returns the repository ("host/repo") of ref.
func repoOf(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("invalid reference %q: %w", ref, err)
	}
	return r.Context().Name(), nil
}

func sameRepo(ref, repo string) bool {
	r, err := repoOf(ref)
	return err == nil && strings.EqualFold(r, repo)
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
