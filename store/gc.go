package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lbuild/lbuild/internal/fsx"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// GC deletes every blob reachable neither from index.json (entries, their
// manifests' configs and layers, recursively through nested indexes) nor
// accepted by keep (e.g. layers held by the build cache; keep may be nil).
// It returns the bytes freed.
//
// GC holds the index lock throughout, so no tag or image entry is added
// while it marks and sweeps; WriteImage and Tag re-check their blobs under
// that lock. Temporary files in .ingest are removed only when no live
// writer holds their flock and they are older than a minute, so GC never
// deletes the temp file of a live BlobWriter. A blob committed by a
// concurrent build but not yet referenced is collected unless the store was
// opened WithGCGrace.
func (s *Store) GC(keep func(v1.Hash) bool) (int64, error) {
	_, freed, err := s.gc(keep, false)
	return freed, err
}

// Collect is GC that also returns the digests it deleted.
func (s *Store) Collect(keep func(v1.Hash) bool) ([]v1.Hash, int64, error) {
	return s.gc(keep, false)
}

// Unreferenced lists the blobs GC(keep) would delete now, with their total
// size, deleting nothing. It takes no lock: the answer may be stale.
func (s *Store) Unreferenced(keep func(v1.Hash) bool) ([]v1.Hash, int64, error) {
	return s.gc(keep, true)
}

func (s *Store) gc(keep func(v1.Hash) bool, dryRun bool) ([]v1.Hash, int64, error) {
	if !dryRun {
		unlock, err := s.lock()
		if err != nil {
			return nil, 0, err
		}
		defer unlock()
	}
	start := time.Now()

	idx, err := s.readIndex()
	if err != nil {
		return nil, 0, err
	}
	live := map[v1.Hash]bool{}
	for _, d := range idx.Manifests {
		if err := s.mark(d.Digest, live, 0); err != nil {
			return nil, 0, err
		}
	}

	var freed int64
	var gone []v1.Hash
	bdir := filepath.Join(s.dir, blobsDir, algo)
	ents, err := os.ReadDir(bdir)
	if err != nil {
		return nil, 0, fmt.Errorf("gc: %w", err)
	}
	for _, e := range ents {
		h := v1.Hash{Algorithm: algo, Hex: e.Name()}
		if validHash(h) != nil || live[h] || (keep != nil && keep(h)) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		if s.gcGrace > 0 && start.Sub(fi.ModTime()) < s.gcGrace {
			continue
		}
		if !dryRun {
			if err := os.Remove(filepath.Join(bdir, e.Name())); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return gone, freed, fmt.Errorf("gc: remove blob: %w", err)
			}
		}
		gone = append(gone, h)
		freed += fi.Size()
	}
	if dryRun {
		return gone, freed, nil
	}
	if freed > 0 {
		if err := fsx.SyncDir(bdir); err != nil {
			return gone, freed, err
		}
	}
	s.cleanIngest(start)
	return gone, freed, nil
}

// mark records h and, if h is a manifest or index, everything it references.
// Missing or unparseable blobs are just marked: GC never fails because of a
// dangling reference.
func (s *Store) mark(h v1.Hash, live map[v1.Hash]bool, depth int) error {
	if live[h] {
		return nil
	}
	live[h] = true
	if depth > 8 {
		return nil
	}
	if size, err := s.BlobSize(h); err != nil || size > 4<<20 {
		return nil // missing, invalid, or too big to be a manifest
	}
	b, err := s.readBlob(h)
	if err != nil {
		if errors.Is(err, ErrNotFound) || validHash(h) != nil {
			return nil
		}
		return fmt.Errorf("gc: %w", err)
	}
	// Both image manifests and indexes are JSON objects; read the fields
	// that reference other blobs.
	var doc struct {
		Config    *v1.Descriptor  `json:"config"`
		Layers    []v1.Descriptor `json:"layers"`
		Manifests []v1.Descriptor `json:"manifests"`
	}
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &doc) != nil {
		return nil // a layer or some other blob
	}
	if doc.Config != nil {
		live[doc.Config.Digest] = true
	}
	for _, l := range doc.Layers {
		live[l.Digest] = true
	}
	for _, m := range doc.Manifests {
		if err := s.mark(m.Digest, live, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// cleanIngest removes temporary files that no live writer holds.
func (s *Store) cleanIngest(now time.Time) {
	dir := filepath.Join(s.dir, ingestDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !(strings.HasPrefix(e.Name(), "blob-") || strings.HasPrefix(e.Name(), ".tmp-") ||
			strings.HasPrefix(e.Name(), "file-") || strings.HasPrefix(e.Name(), "probe-")) {
			continue
		}
		fi, err := e.Info()
		if err != nil || now.Sub(fi.ModTime()) < staleIngestAge {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if f, err := fsx.LockExisting(p, unix.LOCK_EX|unix.LOCK_NB); err == nil {
			os.Remove(p) // nobody writes it: left by a crashed process
			f.Close()
		}
	}
}
