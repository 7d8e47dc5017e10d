package system

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	units "github.com/docker/go-units"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/fsx"
)

// The store's lifecycle. Builds add blobs, step records, unpacked
// snapshots and file-index entries; Prune removes what nothing needs.
// What needs something is a root: an image in the store's index, a
// container (its image and its layers), and, unless pruned as build cache,
// a step record (its layer blob). Unpacked snapshots are kept only for
// images and containers: a cached step's layer unpacks again from its blob
// when a build needs its filesystem.
//
// Builds and container creation hold a shared lease on ROOT/gc.lock for
// their whole run; Prune holds it exclusively, so it never removes what a
// running build is using: it waits for running builds (or, with NoWait,
// gives up at once with ErrBusy). flock has no writer preference, so a
// gate (ROOT/gc.gate) makes builds started meanwhile wait for it: a lease
// passes the gate (shared) before it takes gc.lock, and prune holds the gate
// exclusively while it waits, so a steady stream of builds cannot starve it.

// ErrBusy is returned by Prune with NoWait while builds hold leases.
var ErrBusy = errors.New("builds are running on this root")

// Lease holds the root against Prune until release is called: a build or a
// container creation takes one for as long as it uses blobs and snapshots
// it has not yet recorded in an image, record or container.
//
// Leases nest: a Lease taken while this Root already holds one (a build
// inside a command that holds the root for its exports) only counts, so a
// prune waiting at the gate cannot deadlock against it.
func (r *Root) Lease() (release func(), err error) {
	r.lease.Lock()
	defer r.lease.Unlock()
	if r.lease.n == 0 {
		gate, err := fsx.Lock(filepath.Join(r.Dir, "gc.gate"), unix.LOCK_SH)
		if err != nil {
			return nil, fmt.Errorf("lease store root: %w", err)
		}
		f, err := fsx.Lock(filepath.Join(r.Dir, "gc.lock"), unix.LOCK_SH)
		gate.Close()
		if err != nil {
			return nil, fmt.Errorf("lease store root: %w", err)
		}
		r.lease.f = f
	}
	r.lease.n++
	var once sync.Once
	return func() {
		once.Do(func() {
			r.lease.Lock()
			defer r.lease.Unlock()
			if r.lease.n--; r.lease.n == 0 {
				r.lease.f.Close()
				r.lease.f = nil
			}
		})
	}, nil
}

// exclusive takes the root against every lease: it waits for running
// builds, or with noWait returns ErrBusy.
func (r *Root) exclusive(noWait bool) (func(), error) {
	how := unix.LOCK_EX
	if noWait {
		how |= unix.LOCK_NB
	}
	var held []*os.File
	release := func() {
		for _, f := range held {
			f.Close()
		}
	}
	for _, name := range []string{"gc.gate", "gc.lock"} {
		f, err := fsx.Lock(filepath.Join(r.Dir, name), how)
		if errors.Is(err, fsx.ErrLocked) {
			release()
			return nil, ErrBusy
		}
		if err != nil {
			release()
			return nil, fmt.Errorf("lock store root: %w", err)
		}
		held = append(held, f)
	}
	return release, nil
}

// ContainerRoot is what a container needs kept: its image's manifest and
// the chain ID of the layers it stands on.
type ContainerRoot struct {
	Manifest v1.Hash
	Chain    string
}

// PruneOptions say what Prune removes beyond what nothing needs.
type PruneOptions struct {
	// All drops the whole build cache: every step record (images keep
	// their layers).
	All bool
	// Dangling drops the build cache no image or container uses: the
	// records of layers that are no image's or container's layer (as
	// docker builder prune does). Metadata records (no layer) stay.
	Dangling bool
	// Until drops records not used for this long (0: no such limit).
	Until time.Duration
	// KeepStorage trims the build cache, least recently used records
	// first, until the root's disk use is at most this many bytes (0: no
	// bound). Images and containers are never removed for it.
	KeepStorage int64
	// Mounts also empties the RUN cache mounts.
	Mounts bool
	// DryRun reports what would go and removes nothing.
	DryRun bool
	// NoWait returns ErrBusy instead of waiting for running builds.
	NoWait bool
	// Containers lists the containers' roots (container.Manager.Roots); it
	// is called once prune holds the root, so a container whose creation
	// finished meanwhile is counted.
	Containers func() ([]ContainerRoot, error)
	// Now is the current time (default time.Now).
	Now func() time.Time
}

// PruneReport says what Prune removed (or would remove) and the bytes.
type PruneReport struct {
	Records, Blobs, Snapshots, Mounts, FileIndexEntries int
	RecordBytes, BlobBytes, SnapshotBytes, MountBytes   int64
}

// Freed is the total of the report's bytes.
func (p *PruneReport) Freed() int64 {
	return p.RecordBytes + p.BlobBytes + p.SnapshotBytes + p.MountBytes
}

// Prune removes from the root what no image, container or kept step record
// needs (see the lifecycle above), and the build cache opts asks to drop.
// An interrupted Prune leaves a valid store: records go before the blobs
// they name, children snapshots before their parents, each removal atomic.
func (r *Root) Prune(ctx context.Context, opts PruneOptions) (*PruneReport, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	if !opts.DryRun {
		release, err := r.exclusive(opts.NoWait)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	rep := &PruneReport{}

	// Roots: images and containers.
	imgs, err := r.Store.Images()
	if err != nil {
		return nil, err
	}
	keepBlob := map[v1.Hash]bool{}
	keepChain := map[string]bool{}
	imageLayer := map[string]bool{} // diff IDs of images' and containers' layers
	addImage := func(diffIDs []v1.Hash, layers []v1.Descriptor) {
		for _, l := range layers {
			keepBlob[l.Digest] = true
		}
		for _, d := range diffIDs {
			imageLayer[d.String()] = true
		}
		for _, c := range ChainIDs(diffIDs) {
			keepChain[c] = true
		}
	}
	for _, img := range imgs {
		addImage(img.Config.RootFS.DiffIDs, img.Layers)
	}
	var ctrs []ContainerRoot
	if opts.Containers != nil {
		if ctrs, err = opts.Containers(); err != nil {
			return nil, err
		}
	}
	for _, c := range ctrs {
		keepChain[c.Chain] = true
		keepBlob[c.Manifest] = true
		if img, err := r.Store.Image(c.Manifest); err == nil {
			keepBlob[img.ID] = true
			addImage(img.Config.RootFS.DiffIDs, img.Layers)
		}
	}

	// The build cache: which records stay.
	var recs []*cache.Record
	if err := r.Records.Walk(func(rec *cache.Record) error {
		recs = append(recs, rec)
		return nil
	}); err != nil {
		return nil, err
	}
	var drop, kept []*cache.Record
	for _, rec := range recs {
		expired := opts.Until > 0 && now().Sub(rec.LastUsed) > opts.Until
		dangling := opts.Dangling && rec.DiffID != "" && !imageLayer[rec.DiffID]
		if opts.All || expired || dangling {
			drop = append(drop, rec)
		} else {
			kept = append(kept, rec)
		}
	}
	if opts.KeepStorage > 0 {
		kept, drop = r.trim(kept, drop, keepBlob, keepChain, opts)
	}
	for _, rec := range drop {
		p := filepath.Join(r.Records.Dir(), rec.Key.Hex()+".json")
		if fi, err := os.Stat(p); err == nil {
			rep.RecordBytes += fi.Size()
		}
		rep.Records++
		if !opts.DryRun {
			if err := r.Records.Delete(rec.Key); err != nil && !errors.Is(err, cache.ErrNotFound) {
				return rep, err
			}
		}
	}
	for _, rec := range kept {
		if h, err := v1.NewHash(rec.DiffID); err == nil {
			keepBlob[h] = true
		}
	}

	// Blobs, then snapshots.
	keep := func(h v1.Hash) bool { return keepBlob[h] }
	if opts.DryRun {
		gone, n, err := r.Store.Unreferenced(keep)
		if err != nil {
			return rep, err
		}
		rep.Blobs, rep.BlobBytes = len(gone), n
	} else {
		gone, n, err := r.Store.Collect(keep)
		if err != nil {
			return rep, err
		}
		rep.Blobs, rep.BlobBytes = len(gone), n
	}
	names, n, err := r.Snaps.Prune(ctx, func(name string) bool { return keepChain[name] }, opts.DryRun)
	if err != nil {
		return rep, err
	}
	rep.Snapshots, rep.SnapshotBytes = len(names), n

	if opts.Mounts {
		ents, _ := os.ReadDir(r.CacheMountDir())
		for _, e := range ents {
			p := filepath.Join(r.CacheMountDir(), e.Name())
			rep.MountBytes += fsx.TreeSize(p)
			rep.Mounts++
			if !opts.DryRun {
				if err := os.RemoveAll(p); err != nil {
					return rep, fmt.Errorf("prune cache mount: %w", err)
				}
			}
		}
	}
	if !opts.DryRun && rep.Records > 0 {
		if err := r.pruneManifests(kept); err != nil {
			return rep, err
		}
	}
	if !opts.DryRun {
		if x, err := cache.OpenFileIndex(r.FileIndexPath()); err == nil {
			rep.FileIndexEntries = x.Prune()
			if err := x.Save(); err != nil {
				return rep, err
			}
		}
	}
	return rep, nil
}

// trim moves the least recently used of kept to drop until the root's disk
// use, less what dropping frees, is at most opts.KeepStorage. What a record
// frees is its blob, when nothing else keeps it.
func (r *Root) trim(kept, drop []*cache.Record, keepBlob map[v1.Hash]bool, keepChain map[string]bool, opts PruneOptions) ([]*cache.Record, []*cache.Record) {
	use := fsx.TreeSize(r.Dir)
	// What goes anyway: snapshots of no image or container, records dropped.
	_, snap, _ := r.Snaps.Prune(context.Background(), func(n string) bool { return keepChain[n] }, true)
	use -= snap
	users := map[v1.Hash]int{}
	for _, rec := range kept {
		if h, err := v1.NewHash(rec.DiffID); err == nil {
			users[h]++
		}
	}
	sort.SliceStable(kept, func(i, j int) bool { return kept[i].LastUsed.Before(kept[j].LastUsed) })
	i := 0
	for ; i < len(kept) && use > opts.KeepStorage; i++ {
		rec := kept[i]
		use -= 512 // the record file, roughly
		if h, err := v1.NewHash(rec.DiffID); err == nil {
			if users[h]--; users[h] == 0 && !keepBlob[h] {
				if n, err := r.Store.BlobSize(h); err == nil {
					use -= n
				}
			}
		}
	}
	return kept[i:], append(drop, kept[:i]...)
}

// Config is the root's own settings, ROOT/config.json.
type Config struct {
	GC struct {
		// KeepStorage bounds the root: after each build it is pruned as
		// "lbuild system prune --keep-storage" would (e.g. "10GB").
		KeepStorage string `json:"keep-storage,omitempty"`
	} `json:"gc"`
}

// AutoGCBound is the bound automatic GC keeps the root under: env
// LBUILD_GC_KEEP, else ROOT/config.json's gc.keep-storage; 0 means none.
func (r *Root) AutoGCBound() (int64, error) {
	v := os.Getenv("LBUILD_GC_KEEP")
	if v == "" {
		b, err := os.ReadFile(filepath.Join(r.Dir, "config.json"))
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		var c Config
		if err := json.Unmarshal(b, &c); err != nil {
			return 0, fmt.Errorf("%s: %w (fix or remove it)", filepath.Join(r.Dir, "config.json"), err)
		}
		v = c.GC.KeepStorage
	}
	if v == "" {
		return 0, nil
	}
	return ParseSize(v)
}

// ParseSize reads a size such as "10GB", "512MiB" or a byte count.
func ParseSize(s string) (int64, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return n, nil
	}
	n, err := units.RAMInBytes(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: use e.g. 10GB or 512MB", s)
	}
	return n, nil
}

// pruneManifests removes the input manifests (and their file lists) that no
// kept record references, and the neighbour-index entries of records that
// are gone (--explain's data, see cache.Manifests).
func (r *Root) pruneManifests(kept []*cache.Record) error {
	m, err := cache.OpenManifests(r.ExplainDir())
	if err != nil {
		return nil // no manifests kept
	}
	live := map[string]bool{}
	keys := map[string]bool{}
	for _, rec := range kept {
		keys[string(rec.Key)] = true
		if rec.Manifest == "" {
			continue
		}
		live[rec.Manifest] = true
		if man, err := m.Get(rec.Manifest); err == nil && man.Files != "" {
			live[man.Files] = true
		}
	}
	bdir := filepath.Join(m.Dir(), "blobs", "sha256")
	ents, _ := os.ReadDir(bdir)
	for _, e := range ents {
		if !live["sha256:"+e.Name()] {
			if err := os.Remove(filepath.Join(bdir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("prune manifests: %w", err)
			}
		}
	}
	ndir := filepath.Join(m.Dir(), "next")
	ents, _ = os.ReadDir(ndir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(ndir, e.Name()))
		if err == nil && !keys[string(b)] {
			os.Remove(filepath.Join(ndir, e.Name()))
		}
	}
	return nil
}
