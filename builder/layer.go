package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/lbuild/lbuild/snapshot"
)

// commitLayer runs fn on a fresh snapshot over the stage's filesystem and
// stores what it changed as a layer blob: the snapshot's diff streams into
// the blob writer, which hashes it as it writes (the diff ID), so the layer is
// never read back. The snapshot is then committed under its chain ID.
func (b *build) commitLayer(ctx context.Context, st *stageState, fn layerFunc) (v1.Hash, int64, error) {
	if err := b.root.ensureChain(ctx, st.cfg.RootFS.DiffIDs, st.layers); err != nil {
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
	if err := b.root.Snaps.Diff(ctx, key, w); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("diff snapshot: %w", err)
	}
	diffID, size, err := w.Commit()
	if err != nil {
		return v1.Hash{}, 0, fmt.Errorf("store layer: %w", err)
	}
	if err := b.root.Snaps.Commit(ctx, key, snapshot.ChainID(st.chainID, diffID.String())); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("commit snapshot: %w", err)
	}
	committed = true
	return diffID, size, nil
}

// ensureChain makes sure the snapshots of a layer chain exist, unpacking
// only the missing ones (each once, shared by everything that has it) from
// the store's blobs. A build whose steps all hit the cache never calls it.
func (r *Root) ensureChain(ctx context.Context, diffIDs []v1.Hash, layers []v1.Descriptor) error {
	chains := make([]string, len(diffIDs))
	prev := ""
	for i, d := range diffIDs {
		prev = snapshot.ChainID(prev, d.String())
		chains[i] = prev
	}
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
	rc, err := r.Store.OpenBlob(desc.Digest)
	if err != nil {
		return err
	}
	defer rc.Close()
	var tr io.Reader = rc
	switch desc.MediaType {
	case "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip":
		zr, err := gzip.NewReader(rc)
		if err != nil {
			return err
		}
		defer zr.Close()
		tr = zr
	case "application/vnd.oci.image.layer.v1.tar+zstd":
		zr, err := zstd.NewReader(rc)
		if err != nil {
			return err
		}
		defer zr.Close()
		tr = zr
	}
	return r.Snaps.Apply(ctx, chain, parent, tr)
}

// view mounts a read-only view of a stage's or image's filesystem and returns
// it with a release function.
func (r *Root) view(ctx context.Context, diffIDs []v1.Hash, layers []v1.Descriptor, key string) (string, func(), error) {
	if err := r.ensureChain(ctx, diffIDs, layers); err != nil {
		return "", nil, err
	}
	dir, err := r.Snaps.View(ctx, key, chainOf(diffIDs))
	if err != nil {
		return "", nil, fmt.Errorf("view snapshot: %w", err)
	}
	return dir, func() { r.Snaps.Remove(context.Background(), key) }, nil
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
