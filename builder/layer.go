package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/system"
)

// maxPending bounds the layers of a stage being stored in the background
// while later steps run.
const maxPending = 2

// layerJob is a layer step whose filesystem is final (its snapshot frozen)
// and whose layer is being stored: the snapshot's diff streams into the
// blob writer, which hashes it as it writes (the diff ID), so the layer is
// never read back; then the snapshot is committed under its chain ID. Jobs
// of a stage run in step order, each after the one before (its chain ID
// stands on that one's).
type layerJob struct {
	snapKey string
	prev    *layerJob // the stage's job before, nil if none was pending
	base    string    // chain ID below, if prev is nil
	dopts   []snapshot.DiffOpt
	done    chan struct{}

	// Set by run before done is closed.
	diffID    v1.Hash
	size      int64
	chainID   string
	committed bool
	err       error

	// Kept for drain.
	rec  *cache.Record
	step int // index in the build's steps
	line int // the step's line in the Dockerfile, for errors
}

// errBelowFailed fails a job whose layer stands on a layer that failed.
var errBelowFailed = errors.New("the layer below failed")

func (j *layerJob) run(ctx context.Context, root *system.Root) {
	defer close(j.done)
	base := j.base
	if j.prev != nil {
		<-j.prev.done
		if j.prev.err != nil {
			j.err = errBelowFailed
			return
		}
		base = j.prev.chainID
	}
	var existed bool
	j.diffID, j.size, existed, j.err = storeLayer(ctx, root, j.snapKey, j.dopts)
	if j.err != nil {
		return
	}
	j.chainID = snapshot.ChainID(base, j.diffID.String())
	if err := root.Snaps.Commit(ctx, j.chainID, j.snapKey, snapshot.WithBlob(root.Store.BlobPath(j.diffID), existed)); err != nil {
		j.err = fmt.Errorf("commit snapshot: %w", err)
		return
	}
	j.committed = true
}

// memoryLimit is the size of the tmpfs a step that adds writes bytes gets
// as its upperdir (snapshot.InMemory: its files cost no disk inodes, and
// its layer is written to disk once, as its blob), or 0 to write it on
// disk: when the size is unknown, when EROFS indexes cannot be mounted
// here, or when the step would take more than a quarter of the memory
// available (at most 1 GiB).
func (b *build) memoryLimit(writes int64) int64 {
	if writes <= 0 || b.opts.NoPipeline || !b.root.Snaps.Indexes() {
		return 0
	}
	limit := writes + memoryHeadroom
	if limit > 1<<30 || limit > memAvailable()/4 {
		return 0
	}
	return limit
}

// memoryHeadroom is what a memory snapshot gets beyond its sources:
// directories, and what overlay copies up.
var memoryHeadroom int64 = 64 << 20

// memAvailable is MemAvailable of /proc/meminfo in bytes (0 if unknown).
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// pageRound is n rounded up to whole memory pages, plus one (a tmpfs file
// takes at least one).
func pageRound(n int64) int64 {
	page := int64(os.Getpagesize())
	return (n + page) / page * page
}

// storeLayer writes the diff of active snapshot key into a blob of the
// store; existed: the store had that blob already (see BlobWriter.Existed).
func storeLayer(ctx context.Context, root *system.Root, key string, dopts []snapshot.DiffOpt) (v1.Hash, int64, bool, error) {
	w, err := root.Store.Writer()
	if err != nil {
		return v1.Hash{}, 0, false, err
	}
	defer w.Close()
	if err := root.Snaps.Diff(ctx, key, w, dopts...); err != nil {
		return v1.Hash{}, 0, false, fmt.Errorf("diff snapshot: %w", err)
	}
	diffID, size, err := w.Commit()
	if err != nil {
		return v1.Hash{}, 0, false, fmt.Errorf("store layer: %w", err)
	}
	return diffID, size, w.Existed(), nil
}

// commitLayer runs fn on a fresh snapshot over the stage's filesystem (the
// last pending step's, if one is pending) and returns the job storing its
// layer, started in the background once the snapshot is frozen. Where the
// snapshot driver cannot freeze (copy), the job has run when it returns.
func (b *build) commitLayer(ctx context.Context, st *stageState, fn layerFunc) (*layerJob, error) {
	j := &layerJob{base: st.chainID, done: make(chan struct{})}
	if n := len(st.pending); n > 0 {
		j.prev = st.pending[n-1]
	} else {
		if err := b.needLayers(ctx, st.layers); err != nil {
			return nil, err
		}
		if err := b.root.EnsureChain(ctx, st.cfg.RootFS.DiffIDs, st.layers); err != nil {
			return nil, err
		}
	}
	// A snapshot on the layers below: the frozen one pending, or the
	// stage's committed chain; in memory if limit > 0.
	prepare := func(limit int64) (string, error) {
		j.snapKey = fmt.Sprintf("build-%d-%d", os.Getpid(), activeSeq.Add(1))
		var opts []snapshot.Opt
		if limit > 0 {
			opts = append(opts, snapshot.InMemory(limit))
		}
		if j.prev != nil {
			return b.root.Snaps.Prepare(ctx, j.snapKey, "", append(opts, snapshot.OverFrozen(j.prev.snapKey))...)
		}
		return b.root.Snaps.Prepare(ctx, j.snapKey, st.chainID, opts...)
	}
	limit := b.memoryLimit(st.note.writes)
	dir, err := prepare(limit)
	if err != nil && limit > 0 && ctx.Err() == nil {
		// No tmpfs here (or none of that size): on disk, as without.
		logrus.Debugf("memory snapshot for step: %v: writing it on disk", err)
		limit = 0
		dir, err = prepare(0)
	}
	if err != nil {
		return nil, fmt.Errorf("prepare snapshot: %w", err)
	}
	err = fn(ctx, dir)
	if errors.Is(err, syscall.ENOSPC) && limit > 0 && ctx.Err() == nil {
		// The step wrote more than its sources said (a file grew since
		// it was hashed): again, on disk. Only a COPY goes to memory, and
		// copying twice has no other effect.
		logrus.Debugf("memory snapshot for step full: %v: copying on disk", err)
		b.root.Snaps.Remove(context.Background(), j.snapKey)
		if dir, err = prepare(0); err != nil {
			return nil, fmt.Errorf("prepare snapshot: %w", err)
		}
		err = fn(ctx, dir)
	}
	started := false
	defer func() {
		if !started {
			b.root.Snaps.Remove(context.Background(), j.snapKey)
		}
	}()
	if err != nil {
		return nil, inImage(err, dir)
	}
	if b.time.fixed {
		j.dopts = append(j.dopts, snapshot.WithSourceDateEpoch(b.time.t))
	}
	err = b.root.Snaps.Freeze(ctx, j.snapKey, j.dopts...)
	switch {
	case errors.Is(err, errors.ErrUnsupported) && j.prev == nil:
		j.run(ctx, b.root) // one after the other
	case err != nil:
		return nil, fmt.Errorf("freeze snapshot: %w", err)
	default:
		go j.run(ctx, b.root)
	}
	started = true
	return j, nil
}

// inImage rewrites the paths of file errors from inside the snapshot at
// root ("…/snapshots/active/<id>/merged/app/x") to image paths ("/app/x"):
// the user knows the image, not lbuild's store.
func inImage(err error, root string) error {
	fix := func(p string) string {
		if rest, ok := strings.CutPrefix(p, root); ok {
			return "/" + strings.TrimPrefix(rest, "/")
		}
		return p
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		pe.Path = fix(pe.Path)
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		le.Old, le.New = fix(le.Old), fix(le.New)
	}
	return err
}

// activeSeq numbers the active snapshots (and views) this process makes;
// with the pid it makes their keys unique across builds and processes.
var activeSeq atomic.Int64
