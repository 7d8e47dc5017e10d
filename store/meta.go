package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/lbuild/lbuild/internal/fsx"
)

// Metadata: callers keep small records about the store's content (which
// repositories a blob is known in, the compressed form of a layer, the
// diff ID of a compressed blob, ...) with SetMeta and read them with Meta.
// A record is named by a kind (the caller's, e.g. "sources") and a key
// within it, and lives in DIR/.<kind>/<key>, a dot-dir that OCI tools
// ignore. The store never interprets records, and GC leaves them alone:
// they are caches their owner must be able to rebuild or do without.

// validMetaKind reports whether kind is [a-z][a-z0-9-]{0,31}. (Checked by
// hand: the regexp with its bounded repetition cost ~0.35 ms of every
// lbuild start to compile.)
func validMetaKind(kind string) bool {
	return validName(kind, 32, func(c byte) bool { return 'a' <= c && c <= 'z' },
		func(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' })
}

// validMetaKey reports whether key is [A-Za-z0-9][A-Za-z0-9._-]{0,199}.
func validMetaKey(key string) bool {
	alnum := func(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' }
	return validName(key, 200, alnum, func(c byte) bool { return alnum(c) || c == '.' || c == '_' || c == '-' })
}

// validName reports whether s is 1 to max bytes, its first in first and
// the rest in rest.
func validName(s string, max int, first, rest func(byte) bool) bool {
	if len(s) == 0 || len(s) > max || !first(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !rest(s[i]) {
			return false
		}
	}
	return true
}

func (s *Store) metaPath(kind, key string) (string, error) {
	if !validMetaKind(kind) || kind == ingestDir[1:] {
		return "", fmt.Errorf("invalid metadata kind %q", kind)
	}
	if key != "" && !validMetaKey(key) {
		return "", fmt.Errorf("invalid metadata key %q", key)
	}
	return filepath.Join(s.dir, "."+kind, key), nil
}

// Meta returns the record kind/key as SetMeta last wrote it, or an error
// wrapping ErrNotFound. A kind is a lowercase word ([a-z][a-z0-9-]*, not
// "ingest"); a key is [A-Za-z0-9][A-Za-z0-9._-]* (a digest's hex, say).
func (s *Store) Meta(kind, key string) ([]byte, error) {
	if key == "" {
		return nil, errors.New("empty metadata key")
	}
	p, err := s.metaPath(kind, key)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("metadata %s/%s: %w", kind, key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read metadata: %w", err)
	}
	return b, nil
}

// SetMeta replaces record kind/key with value, atomically: a reader sees the
// old value or the new one, never a part, also after a crash. Concurrent
// writers of one record race; the last rename wins.
func (s *Store) SetMeta(kind, key string, value []byte) error {
	if key == "" {
		return errors.New("empty metadata key")
	}
	p, err := s.metaPath(kind, key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	return fsx.WriteFile(p, filepath.Join(s.dir, ingestDir), value, 0o644)
}

// MetaKeys lists the keys of kind's records, sorted (none when kind has no
// record).
func (s *Store) MetaKeys(kind string) ([]string, error) {
	p, err := s.metaPath(kind, "")
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list metadata: %w", err)
	}
	var keys []string
	for _, e := range ents {
		if e.Type().IsRegular() && validMetaKey(e.Name()) {
			keys = append(keys, e.Name())
		}
	}
	sort.Strings(keys)
	return keys, nil
}
