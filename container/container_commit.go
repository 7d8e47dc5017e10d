package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/runtime/runc"
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
	// NoPause reads the layer of a running container while it runs. By
	// default, as docker commit does, the container is paused (frozen)
	// meanwhile, so that the layer is one state of it. Either way the
	// layer is read without following symlinks, so a container that
	// changes it meanwhile can make the commit fail but not put anything
	// of the host in the image.
	NoPause bool
}

// Commit turns a container's layer into a new image: the
// container's image plus one layer holding exactly the container's changes
// (streamed into the store, which hashes it as it writes), with a history
// entry. ref, if not "", names the image. A running container is paused
// while its layer is read (see CommitOptions.NoPause) and keeps running.
func (r *Manager) Commit(ctx context.Context, nameOrID, ref string, opts CommitOptions) (*store.Image, error) {
	release, err := r.root.Lease() // the new layer is no image's until WriteImage
	if err != nil {
		return nil, err
	}
	defer release()
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
	if err := r.diffLive(ctx, c, w, !opts.NoPause); err != nil {
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

// diffLive writes c's layer to w, pausing c meanwhile if pause and c runs.
func (r *Manager) diffLive(ctx context.Context, c *Container, w io.Writer, pause bool) error {
	resume := func() error { return nil }
	if pause && c.Running() {
		var err error
		if resume, err = r.pause(ctx, c); err != nil {
			return err
		}
	}
	err := r.root.Snaps.DiffLive(ctx, c.Snapshot, w)
	if rerr := resume(); err == nil {
		err = rerr
	}
	return err
}

// pause pauses the running container c and returns the function that
// resumes it. A container paused already (or exited) is left alone.
// pauseTries bounds the attempts to freeze a container for commit.
const pauseTries = 5

func (r *Manager) pause(ctx context.Context, c *Container) (resume func() error, err error) {
	rt, err := r.runtime(c)
	if err != nil {
		return nil, err
	}
	st, err := rt.State(ctx, c.ID)
	if err != nil {
		return nil, fmt.Errorf("pause container %s: %w", c.Name, err)
	}
	if st.Status != "running" {
		return func() error { return nil }, nil
	}
	// The cgroup freezer gives up ("unable to freeze") when the container's
	// processes are busy in the kernel at that moment: try a few times.
	for attempt := 1; ; attempt++ {
		err = rt.Pause(ctx, c.ID)
		if err == nil || errors.Is(err, runc.ErrNoContainer) || attempt == pauseTries || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt) * 20 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("pause container %s: %w (commit without pausing to read it running)", c.Name, err)
	}
	return func() error {
		if err := rt.Resume(context.WithoutCancel(ctx), c.ID); err != nil {
			return fmt.Errorf("resume container %s: %w", c.Name, err)
		}
		return nil
	}, nil
}
