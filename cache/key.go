// Package cache owns lbuild's build-cache vocabulary:
//
//   - A Key names the result of one build step. It is derived by NewKey, a
//     pure function of the parent step's key and the step's inputs (the
//     instruction, its arguments, checksums of copied content, ...), the way
//     identity.ChainID chains diff IDs. Equal keys mean the same step on
//     the same parent step; the record says which filesystem (chain ID)
//     the step ran on, and is reused only on that one.
//   - A Record is what a step left in the cache: the diff ID of its layer
//     (whose blob lives in store) or nothing for a metadata-only step,
//     plus opaque builder state. Records persists them, one file per key.
//   - A FileIndex remembers content hashes of build-context files by their
//     stat data, so that an unchanged context costs stat calls, not reads.
//   - Checksum digests a COPY/ADD source selection: names, types, modes,
//     link targets and content, never timestamps or ownership on the host.
package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// ErrNotFound is returned (wrapped) when the cache holds no record for a key.
var ErrNotFound = errors.New("cache: not found")

// ErrCorrupt is returned (wrapped) for a record file that cannot be decoded
// (truncated, garbage, or holding another key). Callers may treat it as a
// miss and overwrite the record.
var ErrCorrupt = errors.New("cache: corrupt record")

// Key is a step's cache key: "sha256:<64 hex digits>".
type Key string

// keyDomain v2: the chain ID a step stands on left the key for Record.Base
// (a build can then look a step up before the layer below it is stored).
const keyDomain = "lbuild cache key v2"

// NewKey derives the key of a step from its parent's key ("" for the first
// step of a stage) and the parts that define the step. It is sha256 over a
// version tag, the parent and every part, each prefixed by its length, so
// ("ab","c"), ("a","bc") and ("abc") all give different keys.
func NewKey(parent Key, parts ...string) Key {
	h := sha256.New()
	writeField(h, keyDomain)
	writeField(h, string(parent))
	for _, p := range parts {
		writeField(h, p)
	}
	return Key("sha256:" + hex.EncodeToString(h.Sum(nil)))
}

// Inputs are everything a step's key is derived from, one field per kind of
// input, so two steps' inputs can be compared field by field (why a step
// missed the cache). Empty fields are left out of the key's encoding.
// Nothing host-specific (host paths, times, user names) belongs here: the
// same Dockerfile and context give the same Inputs on any machine.
type Inputs struct {
	// Parent is the key of the filesystem step before (FROM, COPY, RUN…;
	// metadata steps do not chain).
	Parent Key `json:"parent,omitempty"`
	// Instruction is the step as expanded: its text, or for COPY/ADD the
	// canonical JSON of its flags and sources.
	Instruction string `json:"instruction"`
	// Data holds the exact values a metadata step sets, as JSON, where the
	// text could read the same for two different instructions.
	Data string `json:"data,omitempty"`
	// Env is a RUN's environment (KEY=VALUE, ARGs included).
	Env []string `json:"env,omitempty"`
	// Workdir, User and Network are what a RUN runs with (Workdir also
	// where COPY resolves relative destinations).
	Workdir string `json:"workdir,omitempty"`
	User    string `json:"user,omitempty"`
	Network string `json:"network,omitempty"`
	// Script is a RUN heredoc's body.
	Script string `json:"script,omitempty"`
	// Mounts are a RUN's --mount options, each in canonical form.
	Mounts []string `json:"mounts,omitempty"`
	// From names COPY --from's source: a stage's or image's identity.
	From string `json:"from,omitempty"`
	// Heredocs are COPY <<EOF bodies, as "name\x00content".
	Heredocs []string `json:"heredocs,omitempty"`
	// Sources is the content checksum of the COPY/ADD sources (Checksum).
	Sources string `json:"sources,omitempty"`
}

// Key derives the step's key: NewKey over the parent and the canonical
// JSON of the other inputs (struct order, so the same inputs always give
// the same bytes).
func (in Inputs) Key() Key {
	parent := in.Parent
	in.Parent = ""
	b, err := json.Marshal(in)
	if err != nil {
		panic(err) // strings and string slices always marshal
	}
	return NewKey(parent, string(b))
}

// writeField writes s to h preceded by its length as 8 big-endian bytes.
func writeField(h hash.Hash, s string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s)))
	h.Write(n[:])
	h.Write([]byte(s))
}

func writeBytes(h hash.Hash, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// Hex returns the key without its "sha256:" prefix.
func (k Key) Hex() string { return strings.TrimPrefix(string(k), "sha256:") }

// String returns the key as "sha256:<hex>".
func (k Key) String() string { return string(k) }

// Validate reports whether k is "sha256:" followed by 64 lowercase hex
// digits. Records uses it before turning a key into a file name.
func (k Key) Validate() error {
	hx, ok := strings.CutPrefix(string(k), "sha256:")
	if !ok || len(hx) != 64 || strings.Trim(hx, "0123456789abcdef") != "" {
		return fmt.Errorf("cache: invalid key %q", string(k))
	}
	return nil
}
