package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lbuild/lbuild/internal/fsx"

	"github.com/sirupsen/logrus"
)

// Record is what a step left in the cache.
type Record struct {
	Key    Key    `json:"key"`
	DiffID string `json:"diffID,omitempty"` // "sha256:…" of the uncompressed layer; "" for a metadata step
	Size   int64  `json:"size,omitempty"`   // uncompressed layer size in bytes
	// Base is the chain ID of the filesystem a layer step ran on ("" for
	// the empty one and for metadata steps): a layer is reused only on the
	// same filesystem (a --no-cache build may have put another result
	// under the parent's key since).
	Base       string          `json:"base,omitempty"`
	Created    time.Time       `json:"created"`   // when the step was first built
	CreatedBy  string          `json:"createdBy"` // the instruction, as shown in image history
	EmptyLayer bool            `json:"emptyLayer,omitempty"`
	Config     json.RawMessage `json:"config,omitempty"` // opaque state for the builder
	// Manifest is the digest of what went into the key (a Manifest in
	// Manifests), "" for records written before lbuild kept them.
	Manifest string `json:"manifest,omitempty"`

	// LastUsed is when a build last made or hit the record: the record
	// file's mtime, set by Touch (never stored in the JSON).
	LastUsed time.Time `json:"-"`
}

// Records stores one Record per key as DIR/<hex>.json. Writes go through
// a synced temp file (DIR/.tmp-*) and a rename, so readers in any process
// see a whole record or none, and concurrent Puts of the same key from
// several processes are safe (the last rename wins; both are complete).
// Records is safe for concurrent use.
type Records struct {
	dir string
}

// OpenRecords opens (creating if needed) the record directory dir.
func OpenRecords(dir string) (*Records, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open cache records: %w", err)
	}
	return &Records{dir: dir}, nil
}

// Dir returns the record directory.
func (r *Records) Dir() string { return r.dir }

func (r *Records) path(k Key) (string, error) {
	if err := k.Validate(); err != nil {
		return "", err
	}
	return filepath.Join(r.dir, k.Hex()+".json"), nil
}

// Get returns the record for k. No record is an error wrapping ErrNotFound;
// an unreadable record (truncated, not JSON, or for another key) is an
// error wrapping ErrCorrupt, which callers may treat as a miss.
func (r *Records) Get(k Key) (*Record, error) {
	p, err := r.path(k)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("record %s: %w", k, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", k, err)
	}
	rec, err := decodeRecord(k, b)
	if err == nil {
		rec.LastUsed = mtime(p)
	}
	return rec, err
}

// Touch marks the records of keys as used at t (their files' mtimes),
// without rewriting them: a build calls it once, at its end, for every
// record it made or hit, so least-recently-used pruning sees real use.
// Keys without a record are skipped.
func (r *Records) Touch(keys []Key, t time.Time) {
	for _, k := range keys {
		if p, err := r.path(k); err == nil {
			os.Chtimes(p, t, t)
		}
	}
}

func mtime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

func decodeRecord(k Key, b []byte) (*Record, error) {
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("record %s: %w: %v", k, ErrCorrupt, err)
	}
	if rec.Key != k {
		return nil, fmt.Errorf("record %s: %w: holds key %q", k, ErrCorrupt, rec.Key)
	}
	return &rec, nil
}

// Put stores rec under rec.Key, replacing any previous record atomically.
func (r *Records) Put(rec *Record) error {
	if rec == nil {
		return errors.New("put record: nil record")
	}
	p, err := r.path(rec.Key)
	if err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("marshal record: %w", err)
	}
	return writeFileAtomic(p, b)
}

// Delete removes the record for k. Deleting an absent record is an error
// wrapping ErrNotFound.
func (r *Records) Delete(k Key) error {
	p, err := r.path(k)
	if err != nil {
		return err
	}
	if err := os.Remove(p); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("record %s: %w", k, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("delete record: %w", err)
	}
	return nil
}

// Walk calls fn for every record in key order. Corrupt records are skipped
// with a warning (Delete removes them); an error from fn stops the walk and
// is returned. Records put or deleted during the walk may or may not be seen.
func (r *Records) Walk(fn func(*Record) error) error {
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return fmt.Errorf("walk cache records: %w", err)
	}
	var names []string
	for _, e := range ents {
		if n := e.Name(); e.Type().IsRegular() && strings.HasSuffix(n, ".json") && !strings.HasPrefix(n, ".") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		k := Key("sha256:" + strings.TrimSuffix(n, ".json"))
		if k.Validate() != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return fmt.Errorf("walk cache records: %w", err)
		}
		rec, err := decodeRecord(k, b)
		if err != nil {
			logrus.Warnf("skipping %v", err)
			continue
		}
		rec.LastUsed = mtime(filepath.Join(r.dir, n))
		if err := fn(rec); err != nil {
			return err
		}
	}
	return nil
}

// Corrupt lists the keys whose record files cannot be decoded (truncated,
// not JSON, holding another key): Walk skips them; fsck reports them and
// Delete removes them.
func (r *Records) Corrupt() ([]Key, error) {
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("list cache records: %w", err)
	}
	var out []Key
	for _, e := range ents {
		n := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(n, ".json") || strings.HasPrefix(n, ".") {
			continue
		}
		k := Key("sha256:" + strings.TrimSuffix(n, ".json"))
		if k.Validate() != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.dir, n))
		if err != nil {
			continue // deleted meanwhile
		}
		if _, err := decodeRecord(k, b); err != nil {
			out = append(out, k)
		}
	}
	return out, nil
}

// writeFileAtomic writes b to path through a synced temp file beside it.
func writeFileAtomic(path string, b []byte) error { return fsx.WriteFile(path, "", b, 0o644) }
