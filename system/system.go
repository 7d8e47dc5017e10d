// Package system is a store root: where each part of lbuild's state lives,
// opened together, and the one place that turns an image's layers into
// snapshots (EnsureChain, View), which builds and containers both stand on.
//
// A store root holds:
//
//	ROOT/oci/         the image store, an OCI image layout (store)
//	ROOT/cache/       step records, the file-hash index, RUN cache mounts (cache)
//	ROOT/snapshots/   unpacked layers by chain ID and active snapshots (snapshot)
//	ROOT/run/         runtime state of RUN steps and containers (runtime/runc)
//	ROOT/containers/  one record (and log) per container (container)
//
// Open only opens: it never kills, unmounts or deletes anything, so a
// read-only command (images, inspect, history) cannot race a running build.
// Crash recovery is Recover's job, run once by the commands that create
// runtime state (build, run, and the container commands).
//
// Contract: several processes may open one root at once; every file under
// it is written to a temp file and renamed into place.
//
// The root itself is mode 0700 (Open tightens a more open one): image
// content, build records, unpacked layers and runtime bundles (which hold
// RUN secrets passed as environment variables) are readable by root only,
// whatever the modes below it.
package system

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/store"
)

// Root is an opened store root: the image store, the build cache and the
// snapshots.
type Root struct {
	Dir     string
	Store   *store.Store
	Records *cache.Records
	Snaps   snapshot.Snapshotter

	lease struct { // see Lease
		sync.Mutex
		n int
		f *os.File
	}
}

// Opt configures Open.
type Opt func(*config)

type config struct{ driver string }

// WithSnapshotter picks the snapshot driver: "overlay", "copy" or "auto" (default).
func WithSnapshotter(driver string) Opt { return func(c *config) { c.driver = driver } }

// rootMode is the mode of a store root: reachable by its owner only, as
// Docker's /var/lib/docker.
const rootMode = 0o700

// Open opens (creating) the store root at dir, making it mode 0700 if it
// is more open. An unwritable dir is an error that says so, and so is a
// shared directory (sticky bit, as /tmp): Open does not lock others out of
// it.
func Open(dir string, opts ...Opt) (*Root, error) {
	cfg := config{driver: "auto"}
	for _, o := range opts {
		o(&cfg)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, rootMode); err != nil {
		return nil, fmt.Errorf("store root %s is not writable: %w (pass a writable --root or set LBUILD_ROOT)", abs, unwrapPath(err))
	}
	if err := secureRoot(abs); err != nil {
		return nil, err
	}
	probe, err := os.CreateTemp(abs, ".probe-*")
	if err != nil {
		return nil, fmt.Errorf("store root %s is not writable: %w (pass a writable --root or set LBUILD_ROOT)", abs, unwrapPath(err))
	}
	probe.Close()
	os.Remove(probe.Name())

	st, err := store.Open(filepath.Join(abs, "oci"))
	if err != nil {
		return nil, err
	}
	rec, err := cache.OpenRecords(filepath.Join(abs, "cache", "records"))
	if err != nil {
		return nil, err
	}
	sn, err := snapshot.New(filepath.Join(abs, "snapshots"), cfg.driver)
	if err != nil {
		return nil, err
	}
	return &Root{Dir: abs, Store: st, Records: rec, Snaps: sn}, nil
}

// secureRoot makes the existing directory dir mode rootMode if group or
// others have any access to it.
func secureRoot(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("store root: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("store root %s is not a directory (pass a directory with --root or LBUILD_ROOT)", dir)
	}
	if fi.Mode().Perm()&^rootMode == 0 {
		return nil
	}
	if fi.Mode()&os.ModeSticky != 0 {
		return fmt.Errorf("store root %s is a shared directory (sticky bit): pass a directory of lbuild's own with --root or LBUILD_ROOT", dir)
	}
	if err := os.Chmod(dir, rootMode); err != nil {
		return fmt.Errorf("store root %s is readable by other users and cannot be made private: %w", dir, unwrapPath(err))
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// FileIndexPath is where the file-hash index of build contexts lives.
func (r *Root) FileIndexPath() string { return filepath.Join(r.Dir, "cache", "files.idx") }

// ExplainDir is where the build cache's manifests live (cache.Manifests):
// what went into each record's key, for lbuild build --explain.
func (r *Root) ExplainDir() string { return filepath.Join(r.Dir, "cache", "manifests") }

// RunDir is the runtime state dir for RUN steps and containers.
func (r *Root) RunDir() string { return filepath.Join(r.Dir, "run") }

// CacheMountDir is where RUN --mount=type=cache directories are kept.
func (r *Root) CacheMountDir() string { return filepath.Join(r.Dir, "cache", "mounts") }

// ContainersDir is where container records live.
func (r *Root) ContainersDir() string { return filepath.Join(r.Dir, "containers") }

// ChainIDs folds diff IDs into the chain IDs of each prefix of the stack
// (image-spec's ChainID): ChainIDs(d)[i] names the snapshot of layers 0..i.
func ChainIDs(diffIDs []v1.Hash) []string {
	chains := make([]string, len(diffIDs))
	prev := ""
	for i, d := range diffIDs {
		prev = snapshot.ChainID(prev, d.String())
		chains[i] = prev
	}
	return chains
}

// ChainID is the chain ID of the whole stack ("" for no layers).
func ChainID(diffIDs []v1.Hash) string {
	if len(diffIDs) == 0 {
		return ""
	}
	return ChainIDs(diffIDs)[len(diffIDs)-1]
}

// EnsureChain makes sure the snapshots of a layer chain exist, making
// only the missing ones (each once, shared by everything that has it) from
// the store's blobs: indexed where the kernel mounts EROFS indexes (an
// uncompressed blob is the layer's tar; a compressed one is decompressed
// into a tar of the layer's own), else unpacked. A build whose steps all
// hit the cache never calls it.
func (r *Root) EnsureChain(ctx context.Context, diffIDs []v1.Hash, layers []v1.Descriptor) error {
	if len(diffIDs) != len(layers) {
		return fmt.Errorf("image has %d layers but its config lists %d diff IDs", len(layers), len(diffIDs))
	}
	chains := ChainIDs(diffIDs)
	start := len(chains)
	for start > 0 && !r.Snaps.Exists(chains[start-1]) {
		start--
	}
	for i := start; i < len(chains); i++ {
		parent := ""
		if i > 0 {
			parent = chains[i-1]
		}
		if err := r.unpack(ctx, chains[i], parent, layers[i]); err != nil {
			return fmt.Errorf("unpack layer %s: %w", diffIDs[i], err)
		}
	}
	return nil
}

func (r *Root) unpack(ctx context.Context, chain, parent string, desc v1.Descriptor) error {
	uncompressed := desc.MediaType == types.OCIUncompressedLayer || desc.MediaType == types.DockerUncompressedLayer
	if uncompressed {
		// Kept as the blob itself where the kernel mounts an index over it.
		if p, err := r.Store.BlobFile(desc.Digest); err == nil {
			err := r.Snaps.ApplyBlob(ctx, chain, parent, p)
			if !errors.Is(err, errors.ErrUnsupported) {
				return err
			}
			// No index of this tar here: a copy of it would have none
			// either.
			logrus.Debugf("layer %s: %v: unpacking it", desc.Digest, err)
			rc, err := r.Store.OpenBlob(desc.Digest)
			if err != nil {
				return err
			}
			defer rc.Close()
			return r.Snaps.Apply(ctx, chain, parent, rc)
		}
	}
	rc, err := r.Store.OpenBlob(desc.Digest)
	if err != nil {
		return err
	}
	defer rc.Close()
	tr, err := compression.DecompressMediaType(rc, string(desc.MediaType))
	if err != nil {
		return err
	}
	defer tr.Close()
	// A compressed layer's tar is written once, beside an index, rather
	// than created file by file (3-4 times faster for many small files).
	return r.Snaps.ApplyIndexed(ctx, chain, parent, tr)
}

// View mounts a read-only view of a stack of layers under the active key
// and returns its directory with a release function.
func (r *Root) View(ctx context.Context, diffIDs []v1.Hash, layers []v1.Descriptor, key string) (string, func(), error) {
	if err := r.EnsureChain(ctx, diffIDs, layers); err != nil {
		return "", nil, err
	}
	dir, err := r.Snaps.View(ctx, key, ChainID(diffIDs))
	if err != nil {
		return "", nil, fmt.Errorf("view snapshot: %w", err)
	}
	return dir, func() { r.Snaps.Remove(context.Background(), key) }, nil
}
