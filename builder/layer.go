package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/snapshot"
)

// commitLayer runs fn on a fresh snapshot over the stage's filesystem and
// stores what it changed as a layer blob: the snapshot's diff streams into
// the blob writer, which hashes it as it writes (the diff ID), so the layer is
// never read back. The snapshot is then committed under its chain ID.
func (b *build) commitLayer(ctx context.Context, st *stageState, fn layerFunc) (v1.Hash, int64, error) {
	if err := b.needLayers(ctx, st.layers); err != nil {
		return v1.Hash{}, 0, err
	}
	if err := b.root.EnsureChain(ctx, st.cfg.RootFS.DiffIDs, st.layers); err != nil {
		return v1.Hash{}, 0, err
	}
	key := fmt.Sprintf("build-%d-%d", os.Getpid(), activeSeq.Add(1))
	dir, err := b.root.Snaps.Prepare(ctx, key, st.chainID)
	if err != nil {
		return v1.Hash{}, 0, fmt.Errorf("prepare snapshot: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			b.root.Snaps.Remove(context.Background(), key)
		}
	}()
	if err := fn(ctx, dir); err != nil {
		return v1.Hash{}, 0, inImage(err, dir)
	}
	w, err := b.root.Store.Writer()
	if err != nil {
		return v1.Hash{}, 0, err
	}
	defer w.Close()
	var dopts []snapshot.DiffOpt
	if b.time.fixed {
		dopts = append(dopts, snapshot.WithSourceDateEpoch(b.time.t))
	}
	if err := b.root.Snaps.Diff(ctx, key, w, dopts...); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("diff snapshot: %w", err)
	}
	diffID, size, err := w.Commit()
	if err != nil {
		return v1.Hash{}, 0, fmt.Errorf("store layer: %w", err)
	}
	if err := b.root.Snaps.Commit(ctx, snapshot.ChainID(st.chainID, diffID.String()), key); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("commit snapshot: %w", err)
	}
	committed = true
	return diffID, size, nil
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
