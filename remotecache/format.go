// Package remotecache moves lbuild's build cache out of a store root and
// back (lbuild build --cache-to / --cache-from), so CI jobs on fresh
// machines build as fast as a developer's second build.
//
// Format: a cache is one OCI 1.1 image manifest with ArtifactType, its
// config blob (media type ConfigMediaType) holding a Config (the step
// records, each with the blob of its layer, and the RUN cache mounts), and
// the layer and mount blobs as its layers. On disk it lives in an OCI image
// layout directory (oci-layout, index.json naming the manifest,
// blobs/sha256/<hex>) holding no absolute path, so it can be moved, copied
// or restored anywhere; in a registry the same manifest is pushed as it is
// under a tag. Local layer blobs are the store's uncompressed tars (digest =
// diff ID, so they can be hard-linked both ways); a registry's are
// compressed once, as lbuild push compresses them.
//
// Vocabulary: an entry is one step's record plus the descriptor of the blob
// holding its layer in this cache; a mount is the tar of one RUN cache
// mount's contents, by mount id. Entries and mounts are kept most recently
// used first, which is how a bounded export drops the least recently used.
//
// Nothing secret is ever exported: secret mounts are never in a layer, a
// key or a record, and cache mounts are exported only when asked.
package remotecache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/cache"
)

// Media types of the cache manifest and its blobs.
const (
	ArtifactType    = "application/vnd.lbuild.cache.v1"
	ConfigMediaType = "application/vnd.lbuild.cache.config.v1+json"
	MountMediaType  = "application/vnd.lbuild.cache.mount.v1.tar"
	// InputsMediaType is a step's input manifest (cache.Manifest) and the
	// blobs it names (a COPY's file list), so --explain works on a fresh
	// machine too.
	InputsMediaType = "application/vnd.lbuild.cache.inputs.v1"
	layerMediaType  = types.OCIUncompressedLayer
)

// DefaultMaxSize is the bound of an export without max-size: the build's
// own entries plus the most recently used others that fit under 10 GB.
const DefaultMaxSize = 10 << 30

// ErrCorrupt is returned (wrapped) for a cache that cannot be trusted: an
// unparsable or inconsistent manifest, config or blob.
var ErrCorrupt = errors.New("corrupt cache")

// Entry is one step's record and the blob of its layer in this cache (nil
// for a metadata step).
type Entry struct {
	cache.Record
	Layer *v1.Descriptor `json:"layer,omitempty"`
	// Inputs are the blobs of the record's input manifest (the manifest
	// first, then its file list), when the exporting store had them.
	Inputs []v1.Descriptor `json:"inputs,omitempty"`
}

// Mount is the exported contents of one RUN cache mount, as a tar blob.
type Mount struct {
	ID   string        `json:"id"`
	Blob v1.Descriptor `json:"blob"`
}

// Config is the config blob of a cache manifest. Entries and Mounts are in
// most recently used first order.
type Config struct {
	Version int     `json:"version"`
	Entries []Entry `json:"entries"`
	Mounts  []Mount `json:"mounts,omitempty"`
}

const configVersion = 1

// parseConfig reads and checks a config blob; local says its layers must be
// uncompressed tars named by their diff IDs.
func parseConfig(b []byte, local bool) (*Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: config: %v", ErrCorrupt, err)
	}
	if c.Version != configVersion {
		return nil, fmt.Errorf("%w: config version %d, want %d (made by another lbuild?)", ErrCorrupt, c.Version, configVersion)
	}
	for _, e := range c.Entries {
		if err := e.Key.Validate(); err != nil {
			return nil, fmt.Errorf("%w: entry: %v", ErrCorrupt, err)
		}
		if (e.DiffID == "") != (e.Layer == nil) {
			return nil, fmt.Errorf("%w: entry %s: layer and diff ID disagree", ErrCorrupt, e.Key)
		}
		if e.Layer == nil {
			continue
		}
		if _, err := v1.NewHash(e.DiffID); err != nil {
			return nil, fmt.Errorf("%w: entry %s: %v", ErrCorrupt, e.Key, err)
		}
		if local && (e.Layer.Digest.String() != e.DiffID || e.Layer.MediaType != layerMediaType) {
			return nil, fmt.Errorf("%w: entry %s: local layer %s is not its diff ID", ErrCorrupt, e.Key, e.Layer.Digest)
		}
	}
	for _, m := range c.Mounts {
		if m.ID == "" || m.Blob.Digest.Algorithm != "sha256" {
			return nil, fmt.Errorf("%w: mount %q", ErrCorrupt, m.ID)
		}
	}
	return &c, nil
}

// manifest returns the cache manifest for config bytes cb and its blobs.
func manifest(cb []byte, blobs []v1.Descriptor) (v1.Descriptor, []byte, error) {
	ch, _, _ := v1.SHA256(bytes.NewReader(cb))
	cfg := v1.Descriptor{MediaType: ConfigMediaType, Digest: ch, Size: int64(len(cb))}
	if blobs == nil {
		blobs = []v1.Descriptor{}
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, ArtifactType: ArtifactType, Config: cfg, Layers: blobs}
	mb, err := json.Marshal(&m)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	return cfg, mb, nil
}

// parseManifest reads a cache manifest and returns its config descriptor.
func parseManifest(mb []byte) (*v1.Manifest, error) {
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	if m.Config.MediaType != ConfigMediaType {
		return nil, fmt.Errorf("%w: manifest config is %s, not an lbuild cache", ErrCorrupt, m.Config.MediaType)
	}
	return m, nil
}

// blobsOf lists the distinct blobs the entries and mounts of c reference,
// in order.
func blobsOf(c *Config) []v1.Descriptor {
	var out []v1.Descriptor
	seen := map[v1.Hash]bool{}
	add := func(d v1.Descriptor) {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			out = append(out, v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
		}
	}
	for _, e := range c.Entries {
		if e.Layer != nil {
			add(*e.Layer)
		}
		for _, d := range e.Inputs {
			add(d)
		}
	}
	for _, m := range c.Mounts {
		add(m.Blob)
	}
	return out
}

// entryCost is what an entry without a blob counts for in max-size (its
// share of the config blob).
const entryCost = 512

// merge puts the build's own entries and mounts first, then the previous
// cache's others in their order as long as the total size stays under
// max; the build's own are always kept.
func merge(cur, prev *Config, max int64) *Config {
	out := &Config{Version: configVersion}
	seen := map[v1.Hash]bool{}
	var total int64
	cost := func(d *v1.Descriptor) int64 {
		if d == nil || seen[d.Digest] {
			return entryCost
		}
		return entryCost + d.Size
	}
	take := func(d *v1.Descriptor, c int64) {
		if d != nil {
			seen[d.Digest] = true
		}
		total += c
	}
	keys := map[cache.Key]bool{}
	for _, e := range cur.Entries {
		if keys[e.Key] {
			continue
		}
		keys[e.Key] = true
		take(e.Layer, cost(e.Layer))
		out.Entries = append(out.Entries, e)
	}
	ids := map[string]bool{}
	for _, m := range cur.Mounts {
		ids[m.ID] = true
		take(&m.Blob, cost(&m.Blob))
		out.Mounts = append(out.Mounts, m)
	}
	if prev == nil {
		return out
	}
	full := false
	for _, e := range prev.Entries {
		if keys[e.Key] || full {
			continue
		}
		c := cost(e.Layer)
		if total+c > max {
			full = true // least recently used from here on: dropped
			continue
		}
		keys[e.Key] = true
		take(e.Layer, c)
		out.Entries = append(out.Entries, e)
	}
	for _, m := range prev.Mounts {
		if ids[m.ID] {
			continue
		}
		c := cost(&m.Blob)
		if total+c > max {
			break
		}
		ids[m.ID] = true
		take(&m.Blob, c)
		out.Mounts = append(out.Mounts, m)
	}
	return out
}
