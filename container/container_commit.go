package container

import (
	"context"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/store"
)

// Changes lists what a container changed in its own layer, as
// docker diff does (A added, C changed, D deleted). It works on running
// containers: nothing is unmounted or modified.
func (r *Manager) Changes(ctx context.Context, nameOrID string) ([]snapshot.Change, error) {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	return r.root.Snaps.Changes(ctx, c.Snapshot)
}

// CommitOptions describe the image Commit makes.
type CommitOptions struct {
	// Author and Message go into the config and the history entry.
	Author, Message string
}

// Commit turns a container's layer into a new image: the
// container's image plus one layer holding exactly the container's changes
// (streamed into the store, which hashes it as it writes), with a history
// entry. ref, if not "", names the image. The container keeps running.
func (r *Manager) Commit(ctx context.Context, nameOrID, ref string, opts CommitOptions) (*store.Image, error) {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	base, err := r.root.Store.Image(c.Manifest)
	if err != nil {
		return nil, fmt.Errorf("image of container %s: %w", c.Name, err)
	}
	w, err := r.root.Store.Writer()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if err := r.root.Snaps.DiffLive(ctx, c.Snapshot, w); err != nil {
		return nil, err
	}
	diffID, size, err := w.Commit()
	if err != nil {
		return nil, fmt.Errorf("store layer: %w", err)
	}
	cfg := imagecfg.Clone(base.Config)
	now := v1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	cfg.Created = now
	if opts.Author != "" {
		cfg.Author = opts.Author
	}
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
	cfg.History = append(cfg.History, v1.History{
		Created:   now,
		CreatedBy: "lbuild commit " + c.Name + ": " + strings.Join(c.Args, " "),
		Author:    opts.Author,
		Comment:   opts.Message,
	})
	layers := append(append([]v1.Descriptor{}, base.Layers...), v1.Descriptor{
		MediaType: types.OCIUncompressedLayer, Size: size, Digest: diffID,
	})
	img, err := r.root.Store.WriteImage(cfg, layers)
	if err != nil {
		return nil, err
	}
	if ref != "" {
		if err := r.root.Store.Tag(ref, img); err != nil {
			return nil, err
		}
		img.Refs = append(img.Refs, store.NormalizeRef(ref))
	}
	return img, nil
}
