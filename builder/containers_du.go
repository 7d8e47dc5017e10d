package builder

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/cache/store"
	"github.com/lbuild/lbuild/snapshot"
)

// ShareTable shows which of several images have which layers. A layer is
// identified by its chain ID (its diff ID on top of everything below it): two
// images share a layer when they were built by the same steps up to it, and
// then share its blob and its unpacked snapshot on disk.
type ShareTable struct {
	Images []*store.Image
	Layers []SharedLayer
}

// SharedLayer is one row of a ShareTable.
type SharedLayer struct {
	ChainID   string
	DiffID    v1.Hash
	Size      int64
	CreatedBy string
	// In[i] reports whether Images[i] has the layer.
	In []bool
}

// Share builds the ShareTable of the named images: their layers in order of
// first appearance (the first image's bottom up, then the layers each later
// image adds).
func (r *Root) Share(names []string) (*ShareTable, error) {
	t := &ShareTable{}
	rows := map[string]int{}
	for i, n := range names {
		img, err := r.Store.Resolve(n)
		if err != nil {
			return nil, err
		}
		t.Images = append(t.Images, img)
		by := layerCreatedBy(img.Config)
		chain := ""
		for j, d := range img.Config.RootFS.DiffIDs {
			chain = snapshot.ChainID(chain, d.String())
			k, ok := rows[chain]
			if !ok {
				k = len(t.Layers)
				rows[chain] = k
				l := SharedLayer{ChainID: chain, DiffID: d, In: make([]bool, len(names))}
				if j < len(img.Layers) {
					l.Size = img.Layers[j].Size
				}
				if j < len(by) {
					l.CreatedBy = by[j]
				}
				t.Layers = append(t.Layers, l)
			}
			t.Layers[k].In[i] = true
		}
	}
	return t, nil
}

// layerCreatedBy returns the created_by of each layer's history entry.
func layerCreatedBy(cfg *v1.ConfigFile) []string {
	var out []string
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			out = append(out, h.CreatedBy)
		}
	}
	return out
}

// DiskUsage is the store's real disk use, each blob and each unpacked layer
// counted once however many images use it.
type DiskUsage struct {
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
func (r *Root) DiskUsage(ctx context.Context) (*DiskUsage, error) {
	imgs, err := r.Store.Images()
	if err != nil {
		return nil, err
	}
	ctrs, err := r.Containers(ctx)
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
		n, err := r.Snaps.Usage(ctx, c.Snapshot)
		if err != nil && !errors.Is(err, snapshot.ErrNotFound) {
			return nil, err
		}
		du.Containers = append(du.Containers, ContainerUsage{Container: c, Size: n})
		du.ContainersTotal += n
	}
	layers, _ := os.ReadDir(filepath.Join(r.Dir, "snapshots", "layers"))
	du.UnpackedLayers = len(layers)
	du.UnpackedSize = treeSize(filepath.Join(r.Dir, "snapshots", "layers"))
	du.CacheRecords = treeSize(filepath.Join(r.Dir, "cache")) - treeSize(r.CacheMountDir())
	du.CacheMounts = treeSize(r.CacheMountDir())
	blobs, _ := os.ReadDir(filepath.Join(r.Store.Dir(), "blobs", "sha256"))
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

// treeSize sums the sizes of the regular files below root (0 if missing).
func treeSize(root string) int64 {
	var n int64
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
