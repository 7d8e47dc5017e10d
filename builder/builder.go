// Package builder runs a Dockerfile's build plan: for each step it derives the
// cache key, reuses the cached result on a hit, and otherwise executes the
// step on a snapshot and commits what changed as a layer.
//
// A store root holds everything a build leaves behind:
//
//	ROOT/oci/        the image store, an OCI image layout (cache/store)
//	ROOT/cache/      step records and the file-hash index (cache)
//	ROOT/snapshots/  unpacked layers by chain ID and active snapshots (snapshot)
//	ROOT/run/        runtime state of RUN steps (builder/executor)
package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lbuild/lbuild/builder/executor"
	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/cache/store"
	"github.com/lbuild/lbuild/snapshot"
)

// Root is an opened store root: the image store, the build cache and the
// snapshots. One Root may serve several builds; several processes may open
// the same directory at once.
type Root struct {
	Dir     string
	Store   *store.Store
	Records *cache.Records
	Snaps   snapshot.Snapshotter
}

// RootOpt configures Open.
type RootOpt func(*rootConfig)

type rootConfig struct{ driver string }

// WithSnapshotter picks the snapshot driver: "overlay", "copy" or "auto" (default).
func WithSnapshotter(driver string) RootOpt { return func(c *rootConfig) { c.driver = driver } }

// Open opens (creating) the store root at dir. An unwritable dir is an error
// that says so.
func Open(dir string, opts ...RootOpt) (*Root, error) {
	cfg := rootConfig{driver: "auto"}
	for _, o := range opts {
		o(&cfg)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o711); err != nil {
		return nil, fmt.Errorf("store root %s is not writable: %w (pass a writable --root or set LBUILD_ROOT)", abs, unwrapPath(err))
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
	r := &Root{Dir: abs, Store: st, Records: rec, Snaps: sn}
	// Leftovers of a crashed earlier run: first its runtime containers (runc
	// runs in its own process group, so a RUN outlives a killed lbuild), then
	// the mounts and temp dirs nobody owns.
	if err := r.cleanupRuntime(); err != nil {
		return nil, err
	}
	if err := r.reapUnfinished(context.Background()); err != nil {
		return nil, fmt.Errorf("clean up unfinished containers: %w", err)
	}
	if err := sn.Cleanup(context.Background()); err != nil {
		return nil, fmt.Errorf("clean up snapshots: %w", err)
	}
	return r, nil
}

// cleanupRuntime kills and deletes the RUN containers of lbuild processes
// that died. It needs runc only if such state exists.
func (r *Root) cleanupRuntime() error {
	if _, err := os.Stat(filepath.Join(r.RunDir(), "runc")); err != nil {
		return nil
	}
	rc, err := executor.NewRunc("", r.RunDir())
	if errors.Is(err, executor.ErrRuntimeNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := rc.Cleanup(context.Background()); err != nil {
		return fmt.Errorf("clean up runtime state: %w", err)
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

// fileIndexPath is where the file-hash index of the build context lives.
func (r *Root) fileIndexPath() string { return filepath.Join(r.Dir, "cache", "files.idx") }

// RunDir is the runtime state dir for RUN steps and containers.
func (r *Root) RunDir() string { return filepath.Join(r.Dir, "run") }

// CacheMountDir is where RUN --mount=type=cache directories are kept.
func (r *Root) CacheMountDir() string { return filepath.Join(r.Dir, "cache", "mounts") }
