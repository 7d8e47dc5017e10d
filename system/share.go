package system

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/store"
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
		chains := ChainIDs(img.Config.RootFS.DiffIDs)
		for j, d := range img.Config.RootFS.DiffIDs {
			chain := chains[j]
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
