package builder

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/parser"
	"github.com/lbuild/lbuild/snapshot"
)

// layerFunc changes the filesystem view at root (an active snapshot).
type layerFunc func(ctx context.Context, root string) error

// step is the one path every instruction takes: derive the key from the
// step's inputs, reuse a cached record, or execute (a layer step runs fn on a
// snapshot of the parent and commits the diff) and record the result.
//
// A layer step's layer is written in the background (pipelined commits, see
// layer.go): the step is done once its filesystem is final, the next step
// starts on it, and the stage takes in the layer's diff ID, chain ID and
// record when they are ready (drain), in step order.
func (b *build) step(ctx context.Context, st *stageState, text string, in cache.Inputs, fn layerFunc) error {
	// The key chains the key of the stage's last filesystem step (not of the
	// metadata steps since: a LABEL or ENV above a COPY is no input of the
	// COPY, as in BuildKit, where metadata never enters an op's digest).
	// What a step does read of the config (RUN's env, user, workdir; COPY's
	// workdir) is in its inputs. The content the step stands on (its chain
	// ID) is checked against the record instead (Record.Base): a --no-cache
	// build may record a different result under a key, and what was built
	// on the old result must then not be taken for the new.
	if fn != nil {
		if err := b.drain(ctx, st, false); err != nil {
			return err
		}
	}
	in.Parent = st.key
	key := in.Key()
	id := b.nextStep()
	st.stepID = id
	b.prog.Start(id, st.label(text))
	res := StepResult{ID: id, Stage: st.name, Text: text, Key: key}
	defer b.noteStep(st, id, key)

	if !b.opts.NoCache {
		var drainErr error
		fits := func(rec *cache.Record) bool {
			if fn == nil {
				return true
			}
			// The base is known once the layers below are stored.
			if drainErr = b.drain(ctx, st, true); drainErr != nil {
				return false
			}
			return rec.Base == st.chainID
		}
		rec, err := b.record(key, fn != nil, fits)
		if drainErr != nil {
			// A layer below failed: the stage has lost its filesystem.
			b.prog.Done(id, drainErr)
			return drainErr
		}
		switch {
		case err == nil:
			// A layer record fits only once the layers below are in
			// (fits drained them): apply stands on st.chainID.
			b.apply(st, rec, text, key)
			b.noteRecord(rec)
			b.prog.Cached(id)
			res.Cached, res.DiffID, res.ChainID = true, rec.DiffID, st.chainID
			b.addStep(res)
			return nil
		case !errors.Is(err, cache.ErrNotFound):
			logrus.Debugf("cache record %s unreadable, rebuilding: %v", key, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	if b.opts.Explain {
		res.Explain = b.explainMiss(st, id, in, key)
	}
	created := b.time.t
	if !b.time.fixed {
		created = b.opts.Now().UTC()
	}
	rec := &cache.Record{Key: key, Created: created, CreatedBy: text, EmptyLayer: fn == nil}
	rec.Manifest = b.recordManifest(st, in)
	if fn == nil {
		if err := b.root.Records.Put(rec); err != nil {
			b.prog.Done(id, err)
			return fmt.Errorf("record cache: %w", err)
		}
		b.indexManifest(st, in, key)
		b.apply(st, rec, text, key)
		b.noteRecord(rec)
		b.prog.Done(id, nil)
		b.addStep(res)
		return nil
	}
	job, err := b.commitLayer(ctx, st, fn)
	if err != nil {
		b.prog.Done(id, err)
		return err
	}
	job.rec, job.step, job.line = rec, b.addStep(res), st.line
	st.pending = append(st.pending, job)
	b.indexManifest(st, in, key)
	b.applyHistory(st, rec, text, false)
	st.key = key
	b.prog.Done(id, nil)
	if b.opts.NoPipeline {
		return b.drain(ctx, st, true)
	}
	return nil
}

// drain takes in the stage's pending layers that are stored (all of them,
// waiting, with wait): their diff IDs join the image, their chain IDs the
// stage, their records the cache. Without wait it also waits while more
// than maxPending are pending, so a build never runs far ahead of its
// layers. A layer that failed fails the stage: drain waits for the others
// and removes their snapshots.
func (b *build) drain(ctx context.Context, st *stageState, wait bool) error {
	for len(st.pending) > 0 {
		j := st.pending[0]
		if !wait && len(st.pending) < maxPending {
			select {
			case <-j.done:
			default:
				return nil
			}
		}
		<-j.done
		if j.err != nil {
			b.abandon(st)
			// Its own progress line said DONE when its filesystem was
			// final: the error names the step whose layer failed, and
			// its line.
			b.mu.Lock()
			s := b.steps[j.step]
			b.mu.Unlock()
			return &parser.Error{File: b.df.Path, Line: j.line,
				Err: fmt.Errorf("storing the layer of #%d %s: %w", s.ID, s.Text, j.err)}
		}
		st.pending = st.pending[1:]
		rec := j.rec
		rec.DiffID, rec.Size, rec.Base = j.diffID.String(), j.size, st.chainID
		if err := b.root.Records.Put(rec); err != nil {
			b.abandon(st)
			return fmt.Errorf("record cache: %w", err)
		}
		b.applyLayer(st, rec)
		b.noteRecord(rec)
		b.setStepLayer(j.step, rec.DiffID, st.chainID)
	}
	return nil
}

// abandon waits for the stage's pending layers and removes the snapshots of
// those not committed, the last first (each stands on the one before).
func (b *build) abandon(st *stageState) {
	for _, j := range st.pending {
		<-j.done
	}
	for i := len(st.pending) - 1; i >= 0; i-- {
		if j := st.pending[i]; !j.committed {
			if err := b.root.Snaps.Remove(context.Background(), j.snapKey); err != nil {
				logrus.Debugf("remove snapshot %s: %v", j.snapKey, err)
			}
		}
	}
	st.pending = nil
}

// usable reports whether a cached record can stand in for running the step:
// a layer step needs its layer blob in the store (or in --cache-from) and,
// with a fixed build time, to have been built at that time or earlier (its
// layer's times are clamped to when it was built: a layer built with
// wall-clock times, or for a later commit, would put files later than the
// build time in the image).
func (b *build) usable(rec *cache.Record, layer bool) bool {
	if !layer {
		return rec.DiffID == ""
	}
	if rec.DiffID == "" {
		return false
	}
	if b.time.fixed && rec.Created.After(b.time.t) {
		logrus.Debugf("cache record %s was built at %s, after the build time: rebuilding", rec.Key, rec.Created)
		return false
	}
	h, err := v1.NewHash(rec.DiffID)
	return err == nil && b.hasLayer(h)
}

// apply advances the stage by a step's record; a layer step's key becomes
// the parent of the stage's next steps.
func (b *build) apply(s *stageState, rec *cache.Record, text string, key cache.Key) {
	b.applyHistory(s, rec, text, rec.DiffID == "")
	if rec.DiffID == "" {
		return
	}
	s.key = key
	b.applyLayer(s, rec)
}

// applyHistory adds a step's history entry. It is created at the build time
// if that is fixed, so a step taken from the cache (built at another time)
// reads the same as one built now; with "now", at the time the record was
// built, so a fully cached rebuild gives the same image.
func (b *build) applyHistory(s *stageState, rec *cache.Record, text string, empty bool) {
	created := v1.Time{Time: rec.Created}
	if b.time.fixed {
		created = v1.Time{Time: b.time.t}
	}
	s.cfg.History = append(s.cfg.History, v1.History{Created: created, CreatedBy: text, Comment: historyComment, EmptyLayer: empty})
	s.cfg.Created = created
}

// applyLayer adds a layer step's layer to the stage's image and filesystem.
func (b *build) applyLayer(s *stageState, rec *cache.Record) {
	h, _ := v1.NewHash(rec.DiffID)
	s.cfg.RootFS.DiffIDs = append(s.cfg.RootFS.DiffIDs, h)
	s.layers = append(s.layers, v1.Descriptor{MediaType: layerMediaType, Digest: h, Size: rec.Size})
	s.chainID = snapshot.ChainID(s.chainID, rec.DiffID)
}

const layerMediaType = "application/vnd.oci.image.layer.v1.tar"
