package container

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/internal/fsx"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/store"
)

// DiskUsage is the store's real disk use, each blob and each unpacked layer
// counted once however many images use it.
type DiskUsage struct {
	// Total is every byte under the root.
	Total int64

	Images []ImageUsage
	// ImagesTotal is the size of the layer blobs of all images, each once.
	ImagesTotal int64
	// ImagesSum is what the images would take without sharing.
	ImagesSum int64

	Containers      []ContainerUsage
	ContainersTotal int64

	// UnpackedLayers and UnpackedSize describe ROOT/snapshots/layers: each
	// layer unpacked once by chain ID, shared by builds and containers.
	UnpackedLayers int
	UnpackedSize   int64

	// The build cache: step records and the file-hash index, RUN cache
	// mounts, and blobs no image references (layers kept for the cache).
	CacheRecords, CacheMounts, CacheBlobs int64
}

// ImageUsage is one image's share of the blob store.
type ImageUsage struct {
	Image *store.Image
	// Size = Shared + Unique: Shared counts the layers other images use
	// too, Unique the ones only this image has.
	Size, Shared, Unique int64
	Containers           int
}

// ContainerUsage is one container's own layer.
type ContainerUsage struct {
	Container *Container
	Size      int64
}

// DiskUsage measures the store.
func (r *Manager) DiskUsage(ctx context.Context) (*DiskUsage, error) {
	imgs, err := r.root.Store.Images()
	if err != nil {
		return nil, err
	}
	ctrs, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	du := &DiskUsage{}
	users := map[v1.Hash]int{}
	referenced := map[v1.Hash]bool{}
	sizes := map[v1.Hash]int64{}
	for _, img := range imgs {
		seen := map[v1.Hash]bool{}
		referenced[img.Manifest.Digest], referenced[img.ID] = true, true
		for _, l := range img.Layers {
			referenced[l.Digest] = true
			sizes[l.Digest] = l.Size
			if !seen[l.Digest] {
				seen[l.Digest] = true
				users[l.Digest]++
			}
		}
	}
	for _, s := range sizes {
		du.ImagesTotal += s
	}
	perImage := map[v1.Hash]int{}
	for _, c := range ctrs {
		perImage[c.ImageID]++
	}
	for _, img := range imgs {
		u := ImageUsage{Image: img, Containers: perImage[img.ID]}
		seen := map[v1.Hash]bool{}
		for _, l := range img.Layers {
			if seen[l.Digest] {
				continue
			}
			seen[l.Digest] = true
			u.Size += l.Size
			if users[l.Digest] > 1 {
				u.Shared += l.Size
			} else {
				u.Unique += l.Size
			}
		}
		du.ImagesSum += u.Size
		du.Images = append(du.Images, u)
	}
	for _, c := range ctrs {
		n, err := r.root.Snaps.Usage(ctx, c.Snapshot)
		if err != nil && !errors.Is(err, snapshot.ErrNotFound) {
			return nil, err
		}
		du.Containers = append(du.Containers, ContainerUsage{Container: c, Size: n})
		du.ContainersTotal += n
	}
	layers, _ := os.ReadDir(filepath.Join(r.root.Dir, "snapshots", "layers"))
	du.UnpackedLayers = len(layers)
	du.Total = fsx.TreeSize(r.root.Dir)
	du.UnpackedSize = fsx.TreeSize(filepath.Join(r.root.Dir, "snapshots", "layers"))
	du.CacheRecords = fsx.TreeSize(filepath.Join(r.root.Dir, "cache")) - fsx.TreeSize(r.root.CacheMountDir())
	du.CacheMounts = fsx.TreeSize(r.root.CacheMountDir())
	blobs, _ := os.ReadDir(filepath.Join(r.root.Store.Dir(), "blobs", "sha256"))
	for _, b := range blobs {
		h := v1.Hash{Algorithm: "sha256", Hex: b.Name()}
		if referenced[h] {
			continue
		}
		if fi, err := b.Info(); err == nil {
			du.CacheBlobs += fi.Size()
		}
	}
	return du, nil
}
