package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
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
	// What runLayer needs of the stage, taken by newJob: the layers below
	// to make sure of (if prev is nil) and the bytes the step adds.
	layers  []v1.Descriptor
	diffIDs []v1.Hash
	writes  int64

	// Set by run before done is closed.
	diffID    v1.Hash
	size      int64
	chainID   string
	committed bool
	err       error

	// Kept for drain.
	rec  *cache.Record
	step int // index in the build's steps
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
	var j *layerJob
	if sp := st.spec; sp != nil {
		// The step's work started before its key was known (speculate).
		st.spec = nil
		<-sp.done
		if sp.err == nil {
			j = sp.job
		} else {
			// Done again the usual way: a real error recurs there.
			logrus.Debugf("speculative step: %v: running it again", sp.err)
		}
	}
	if j == nil {
		var err error
		if j, err = b.runLayer(ctx, b.newJob(st), fn); err != nil {
			return nil, err
		}
	}
	started := false
	defer func() {
		if !started {
			b.root.Snaps.Remove(context.Background(), j.snapKey)
		}
	}()
	if b.time.fixed {
		j.dopts = append(j.dopts, snapshot.WithSourceDateEpoch(b.time.t))
	}
	err := b.root.Snaps.Freeze(ctx, j.snapKey, j.dopts...)
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

// newJob is the job of the next layer step of st: on the stage's last
// pending layer, else on its committed chain. It reads st, so it runs on
// the stage's goroutine; runLayer may then run on another.
func (b *build) newJob(st *stageState) *layerJob {
	j := &layerJob{base: st.chainID, done: make(chan struct{}), writes: st.note.writes}
	if n := len(st.pending); n > 0 {
		j.prev = st.pending[n-1]
	} else {
		j.layers = slices.Clone(st.layers)
		j.diffIDs = slices.Clone(st.cfg.RootFS.DiffIDs)
	}
	return j
}

// runLayer runs fn on a fresh snapshot for job j (in memory if its writes
// fit: memoryLimit) and returns j with the snapshot's key set; on an error
// the snapshot is gone.
func (b *build) runLayer(ctx context.Context, j *layerJob, fn layerFunc) (*layerJob, error) {
	if j.prev == nil {
		if err := b.needLayers(ctx, j.layers); err != nil {
			return nil, err
		}
		if err := b.root.EnsureChain(ctx, j.diffIDs, j.layers); err != nil {
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
		return b.root.Snaps.Prepare(ctx, j.snapKey, j.base, opts...)
	}
	limit := b.memoryLimit(j.writes)
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
	if err != nil {
		b.root.Snaps.Remove(context.Background(), j.snapKey)
		return nil, inImage(err, dir)
	}
	return j, nil
}

// speculation is a layer step's work (a COPY from the context) started
// while its inputs are still being hashed, because no cached result can
// exist for it (speculate). commitLayer takes it; a step that finds a
// record after all drops it (dropSpec).
type speculation struct {
	job    *layerJob
	err    error
	done   chan struct{}
	cancel context.CancelFunc
}

// speculate reports whether a layer step of st about to be keyed cannot
// hit the cache, so that its work may start before its key is known:
// --no-cache, or no step with its text ever recorded on the same parent
// here (cache.Manifests.Next) and no --cache-from to bring one. Serial
// builds (NoPipeline) never speculate.
func (b *build) speculate(st *stageState) bool {
	switch {
	case b.opts.NoPipeline:
		return false
	case b.opts.NoCache:
		return true
	case b.opts.CacheFrom != nil || b.xp.man == nil:
		return false
	}
	_, err := b.xp.man.Next(st.key, st.note.text)
	return errors.Is(err, cache.ErrNotFound)
}

// startSpec starts fn for st's next layer step in the background.
func (b *build) startSpec(ctx context.Context, st *stageState, fn layerFunc) {
	sctx, cancel := context.WithCancel(ctx)
	sp := &speculation{done: make(chan struct{}), cancel: cancel}
	j := b.newJob(st)
	go func() {
		defer close(sp.done)
		sp.job, sp.err = b.runLayer(sctx, j, fn)
	}()
	st.spec = sp
	speculated.Add(1)
}

// dropSpec discards a speculation commitLayer did not take.
func (b *build) dropSpec(st *stageState) {
	sp := st.spec
	if sp == nil {
		return
	}
	st.spec = nil
	sp.cancel()
	<-sp.done
	if sp.err == nil {
		b.root.Snaps.Remove(context.Background(), sp.job.snapKey)
	}
}

// speculated counts speculations started (tests); with testSpecWait a
// COPY waits for its speculation before hashing (tests).
var (
	speculated   atomic.Int64
	testSpecWait bool
)

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
