package remotecache

import (
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
	"sync"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/transfer"
)

// Source is the caches of a build's --cache-from, merged (the first that
// holds a key wins). It implements builder.CacheSource. Import reads each
// cache's config blob once; blobs are read only when the build asks.
type Source struct {
	warn    func(string)
	entries map[cache.Key]*Entry
	origins map[*Entry]*origin // the cache each entry came from
	layers  map[v1.Hash]blobAt // by diff ID
	mounts  map[string]blobAt  // by mount id
	mu      sync.Mutex         // serializes fetches
}

// origin is one imported cache.
type origin struct {
	spec  Spec
	topts []transfer.Opt
}

type blobAt struct {
	o    *origin
	desc v1.Descriptor
}

// open opens blob d of the cache.
func (o *origin) open(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	if o.spec.Type == "local" {
		f, err := os.Open(blobPath(o.spec.Dir, d.Digest))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return f, nil
	}
	return transfer.OpenRemoteBlob(ctx, o.spec.Ref, d.Digest, o.topts...)
}

// Import reads the caches specs name. A cache that does not exist yet (the
// first CI run) or cannot be read is reported to warn in one line and left
// out: the build goes on without it. topts configure registry access.
func Import(ctx context.Context, specs []Spec, warn func(string), topts ...transfer.Opt) *Source {
	s := &Source{warn: warn, entries: map[cache.Key]*Entry{}, origins: map[*Entry]*origin{}, layers: map[v1.Hash]blobAt{}, mounts: map[string]blobAt{}}
	for _, spec := range specs {
		o := &origin{spec: spec, topts: topts}
		var cfg *Config
		var err error
		if spec.Type == "local" {
			cfg, err = readLocalChecked(spec.Dir, func(n int) {
				warn(fmt.Sprintf("--cache-from %s: %d layer blobs are missing or truncated: their steps will rebuild", spec.Dir, n))
			})
		} else {
			cfg, err = readRegistry(ctx, spec.Ref, topts)
		}
		switch {
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, store.ErrNotFound):
			warn(fmt.Sprintf("--cache-from %s: no cache there yet, building without it", spec))
			continue
		case err != nil:
			warn(fmt.Sprintf("--cache-from %s: cannot use this cache, building without it: %v", spec, err))
			continue
		}
		for i := range cfg.Entries {
			e := &cfg.Entries[i]
			if _, ok := s.entries[e.Key]; !ok {
				s.entries[e.Key] = e
				s.origins[e] = o
			}
			if e.Layer != nil {
				h, _ := v1.NewHash(e.DiffID)
				if _, ok := s.layers[h]; !ok {
					s.layers[h] = blobAt{o, *e.Layer}
				}
			}
		}
		for _, m := range cfg.Mounts {
			if _, ok := s.mounts[m.ID]; !ok {
				s.mounts[m.ID] = blobAt{o, m.Blob}
			}
		}
	}
	return s
}

// ImportInputs brings the imported records' input manifests into m and
// indexes them, so that --explain finds the nearest cached neighbour of a
// step among the imported records too. A blob that cannot be read or does
// not match its digest is skipped (the step is then explained as new).
func (s *Source) ImportInputs(ctx context.Context, m *cache.Manifests) {
	if s == nil {
		return
	}
	for key, e := range s.entries {
		for i, d := range e.Inputs {
			at := blobAt{s.originOf(e), d}
			if at.o == nil {
				break
			}
			if p, err := m.BlobPath(d.Digest.String()); err == nil {
				if _, err := os.Stat(p); err == nil {
					if i == 0 {
						s.index(m, key, d.Digest.String())
					}
					continue
				}
			}
			rc, err := at.o.open(ctx, d)
			if err != nil {
				break
			}
			b, err := io.ReadAll(io.LimitReader(rc, 64<<20))
			rc.Close()
			if err != nil {
				break
			}
			got, err := m.PutBlob(b)
			if err != nil || got != d.Digest.String() {
				break
			}
			if i == 0 {
				s.index(m, key, got)
			}
		}
	}
}

func (s *Source) index(m *cache.Manifests, key cache.Key, digest string) {
	if man, err := m.Get(digest); err == nil {
		m.Index(key, man)
	}
}

// originOf returns the cache an entry came from.
func (s *Source) originOf(e *Entry) *origin { return s.origins[e] }

// Len returns how many entries the imported caches hold.
func (s *Source) Len() int { return len(s.entries) }

// Record returns a copy of the imported record of key, or nil.
func (s *Source) Record(key cache.Key) *cache.Record {
	e, ok := s.entries[key]
	if !ok {
		return nil
	}
	rec := e.Record
	return &rec
}

// HasLayer reports whether an imported cache holds the layer with diffID.
func (s *Source) HasLayer(diffID v1.Hash) bool {
	_, ok := s.layers[diffID]
	return ok
}

// layer returns where an imported cache holds the layer with diffID.
func (s *Source) layer(diffID v1.Hash) (blobAt, bool) {
	if s == nil {
		return blobAt{}, false
	}
	b, ok := s.layers[diffID]
	return b, ok
}

// FetchLayer stores the layer with diffID in st, verified against diffID:
// from a cache dir by a hard link to the cache's blob (a copy across
// filesystems), from a registry by downloading and decompressing it.
func (s *Source) FetchLayer(ctx context.Context, st *store.Store, diffID v1.Hash) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.HasBlob(diffID) {
		return nil
	}
	b, ok := s.layers[diffID]
	if !ok {
		return fmt.Errorf("layer %s: %w", diffID, store.ErrNotFound)
	}
	if b.o.spec.Type == "local" {
		return linkBlob(st, blobPath(b.o.spec.Dir, diffID), diffID)
	}
	rc, err := b.o.open(ctx, b.desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	tr, err := compression.DecompressMediaType(rc, string(b.desc.MediaType))
	if err != nil {
		return err
	}
	defer tr.Close()
	return putVerified(st, tr, diffID)
}

// SeedMount fills the new cache-mount dir of id from an imported cache. A
// corrupt mount blob is reported to warn and leaves dir empty.
func (s *Source) SeedMount(ctx context.Context, id, dir string) error {
	b, ok := s.mounts[id]
	if !ok {
		return nil
	}
	rc, err := b.o.open(ctx, b.desc)
	if err != nil {
		s.warn(fmt.Sprintf("--cache-from %s: cache mount %s: %v; it starts empty", b.o.spec, id, err))
		return nil
	}
	defer rc.Close()
	h := sha256.New()
	r := io.TeeReader(rc, h)
	err = extractMountTar(r, dir)
	if err == nil {
		_, err = io.Copy(io.Discard, r)
	}
	if err == nil && hex.EncodeToString(h.Sum(nil)) != b.desc.Digest.Hex {
		err = fmt.Errorf("%w: blob %s does not hash to its digest", ErrCorrupt, b.desc.Digest)
	}
	if err != nil {
		emptyDir(dir)
		s.warn(fmt.Sprintf("--cache-from %s: cache mount %s: %v; it starts empty", b.o.spec, id, err))
	}
	return nil
}

func emptyDir(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// putVerified streams r into a new store blob, committed only if it hashes
// to want.
func putVerified(st *store.Store, r io.Reader, want v1.Hash) error {
	w, err := st.Writer()
	if err != nil {
		return err
	}
	defer w.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(w, h), r, make([]byte, 1<<20)); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
		return fmt.Errorf("%w: layer %s hashes to sha256:%s", ErrCorrupt, want, got)
	}
	_, _, err = w.Commit()
	return err
}

// linkBlob makes the file at src blob want of st: it is hashed through an
// open descriptor and that very file is hard-linked into place, so what is
// linked is what was checked; across filesystems it is copied.
func linkBlob(st *store.Store, src string, want v1.Hash) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
		return fmt.Errorf("%w: %s hashes to sha256:%s", ErrCorrupt, src, got)
	}
	// A hard link shares the inode: only a file nobody else can change
	// (ours, written by no group or other user) may become a store blob;
	// any other is copied.
	if !privateFile(f) {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		return putVerified(st, f, want)
	}
	dst := st.BlobPath(want)
	err = unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
	if err == nil || errors.Is(err, unix.EEXIST) {
		return nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return putVerified(st, f, want)
}

// readRegistry reads the cache manifest tagged ref and its config.
func readRegistry(ctx context.Context, ref string, topts []transfer.Opt) (*Config, error) {
	a, err := transfer.FetchArtifact(ctx, ref, topts...)
	if err != nil {
		return nil, err
	}
	if _, err := parseManifest(a.Manifest); err != nil {
		return nil, err
	}
	return parseConfig(a.Config, false)
}

// readLocal reads the cache in dir: index.json, the cache manifest it
// names and its config, each checked against its digest. No cache there
// is an error wrapping fs.ErrNotExist.
func readLocal(dir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("%w: index.json: %v", ErrCorrupt, err)
	}
	var md *v1.Descriptor
	for i, d := range idx.Manifests {
		if d.ArtifactType == ArtifactType {
			md = &idx.Manifests[i]
			break
		}
	}
	if md == nil {
		return nil, fmt.Errorf("%w: index.json names no lbuild cache manifest", ErrCorrupt)
	}
	mb, err := readBlob(dir, *md)
	if err != nil {
		return nil, err
	}
	m, err := parseManifest(mb)
	if err != nil {
		return nil, err
	}
	cb, err := readBlob(dir, m.Config)
	if err != nil {
		return nil, err
	}
	return parseConfig(cb, true)
}

// readLocalChecked is readLocal that also drops the entries whose layer
// blob is missing or truncated, telling bad how many there were.
func readLocalChecked(dir string, bad func(n int)) (*Config, error) {
	cfg, err := readLocal(dir)
	if err != nil {
		return nil, err
	}
	kept, n := cfg.Entries[:0], 0
	for _, e := range cfg.Entries {
		if e.Layer != nil {
			fi, err := os.Stat(blobPath(dir, e.Layer.Digest))
			if err != nil || fi.Size() != e.Layer.Size {
				n++
				continue
			}
		}
		kept = append(kept, e)
	}
	cfg.Entries = kept
	if n > 0 {
		bad(n)
	}
	return cfg, nil
}

func blobPath(dir string, h v1.Hash) string {
	return filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
}

// readBlob reads a small blob of the layout at dir and checks its digest.
func readBlob(dir string, d v1.Descriptor) ([]byte, error) {
	if d.Size > 64<<20 || d.Digest.Algorithm != "sha256" || len(d.Digest.Hex) != 64 {
		return nil, fmt.Errorf("%w: descriptor %s", ErrCorrupt, d.Digest)
	}
	b, err := os.ReadFile(blobPath(dir, d.Digest))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if h, _, _ := v1.SHA256(bytesReader(b)); h != d.Digest || int64(len(b)) != d.Size {
		return nil, fmt.Errorf("%w: blob %s does not hash to its digest", ErrCorrupt, d.Digest)
	}
	return b, nil
}

// privateFile reports whether f is owned by this process's user and
// writable by no one else.
func privateFile(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid() && fi.Mode().Perm()&0o022 == 0
}
