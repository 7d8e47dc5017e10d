package builder

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/snapshot"
)

// layerFunc changes the filesystem view at root (an active snapshot).
type layerFunc func(ctx context.Context, root string) error

// step is the one path every instruction takes: derive the key from the
// step's inputs, reuse a cached record, or execute (a layer step runs fn on a
// snapshot of the parent and commits the diff) and record the result.
func (b *build) step(ctx context.Context, st *stageState, text string, in cache.Inputs, fn layerFunc) error {
	// The key chains the key of the stage's last filesystem step (not of the
	// metadata steps since: a LABEL or ENV above a COPY is no input of the
	// COPY, as in BuildKit, where metadata never enters an op's digest) and
	// the content it stands on (its chain ID): a --no-cache build may record
	// a different result under a key, and what was built on the old result
	// must then not be taken for the new. What a step does read of the
	// config (RUN's env, user, workdir; COPY's workdir) is in its inputs.
	in.Parent, in.Base = st.key, st.chainID
	key := in.Key()
	id := b.nextStep()
	st.stepID = id
	b.prog.Start(id, st.label(text))
	res := StepResult{ID: id, Stage: st.name, Text: text, Key: key}
	defer b.noteStep(st, id, key)

	if !b.opts.NoCache {
		rec, err := b.record(key, fn != nil)
		switch {
		case err == nil && b.usable(rec, fn != nil):
			b.apply(st, rec, text, key)
			b.noteRecord(rec)
			b.prog.Cached(id)
			res.Cached, res.DiffID, res.ChainID = true, rec.DiffID, st.chainID
			b.addStep(res)
			return nil
		case err != nil && !errors.Is(err, cache.ErrNotFound):
			logrus.Debugf("cache record %s unreadable, rebuilding: %v", key, err)
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
	if fn != nil {
		diffID, size, err := b.commitLayer(ctx, st, fn)
		if err != nil {
			b.prog.Done(id, err)
			return err
		}
		rec.DiffID, rec.Size = diffID.String(), size
	}
	rec.Manifest = b.recordManifest(st, in)
	if err := b.root.Records.Put(rec); err != nil {
		b.prog.Done(id, err)
		return fmt.Errorf("record cache: %w", err)
	}
	b.indexManifest(st, in, key)
	b.apply(st, rec, text, key)
	b.noteRecord(rec)
	b.prog.Done(id, nil)
	res.DiffID, res.ChainID = rec.DiffID, st.chainID
	b.addStep(res)
	return nil
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
// the parent of the stage's next steps. Its history entry is created
// at the build time if that is fixed, so a step taken from the cache (built
// at another time) reads the same as one built now; with "now", at the time
// the record was built, so a fully cached rebuild gives the same image.
func (b *build) apply(s *stageState, rec *cache.Record, text string, key cache.Key) {
	created := v1.Time{Time: rec.Created}
	if b.time.fixed {
		created = v1.Time{Time: b.time.t}
	}
	s.cfg.History = append(s.cfg.History, v1.History{Created: created, CreatedBy: text, Comment: historyComment, EmptyLayer: rec.DiffID == ""})
	s.cfg.Created = created
	if rec.DiffID == "" {
		return
	}
	s.key = key
	h, _ := v1.NewHash(rec.DiffID)
	s.cfg.RootFS.DiffIDs = append(s.cfg.RootFS.DiffIDs, h)
	s.layers = append(s.layers, v1.Descriptor{MediaType: layerMediaType, Digest: h, Size: rec.Size})
	s.chainID = snapshot.ChainID(s.chainID, rec.DiffID)
}

const layerMediaType = "application/vnd.oci.image.layer.v1.tar"
