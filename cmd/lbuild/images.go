package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/system"
)

func newImagesCmd(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List images in the store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.open()
			if err != nil {
				return err
			}
			imgs, err := r.Store.Images()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			if !quiet {
				fmt.Fprintln(w, "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE")
			}
			type row struct{ repo, tag, id, created, size string }
			var rows []row
			for _, img := range imgs {
				size := units.HumanSizeWithPrecision(float64(imageSize(img)), 3)
				created := since(img.Config.Created.Time)
				refs := img.Refs
				if len(refs) == 0 {
					refs = []string{"<none>:<none>"}
				}
				for _, ref := range refs {
					repo, tag := splitRef(ref)
					rows = append(rows, row{repo, tag, shortID(img.ID), created, size})
				}
			}
			sort.Slice(rows, func(i, j int) bool {
				return rows[i].repo+":"+rows[i].tag < rows[j].repo+":"+rows[j].tag
			})
			for _, r := range rows {
				if quiet {
					fmt.Fprintln(w, r.id)
					continue
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.repo, r.tag, r.id, r.created, r.size)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "only show image IDs")
	return cmd
}

// splitRef splits "host:5000/name:tag" into ("host:5000/name", "tag").
func splitRef(ref string) (string, string) {
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref[:i], ref[i+1:]
	}
	return ref, "<none>"
}

func shortID(h v1.Hash) string {
	if len(h.Hex) < 12 {
		return h.Hex
	}
	return h.Hex[:12]
}

func imageSize(img *store.Image) int64 {
	var n int64
	for _, l := range img.Layers {
		n += l.Size
	}
	return n
}

func since(t time.Time) string {
	if t.IsZero() {
		return "N/A"
	}
	return units.HumanDuration(time.Since(t)) + " ago"
}

func newHistoryCmd(g *globals) *cobra.Command {
	var noTrunc bool
	cmd := &cobra.Command{
		Use:   "history IMAGE",
		Short: "Show the history of an image (as docker image history)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, img, err := g.image(args[0])
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			fmt.Fprintln(w, "IMAGE\tCREATED\tCREATED BY\tSIZE\tCOMMENT")
			// Sizes: each non-empty history entry owns the next layer.
			sizes := make([]int64, len(img.Config.History))
			li := 0
			for i, h := range img.Config.History {
				if !h.EmptyLayer && li < len(img.Layers) {
					sizes[i] = img.Layers[li].Size
					li++
				}
			}
			for i := len(img.Config.History) - 1; i >= 0; i-- {
				h := img.Config.History[i]
				id := "<missing>"
				if i == len(img.Config.History)-1 {
					id = shortID(img.ID)
				}
				by := strings.ReplaceAll(h.CreatedBy, "\n", "\\n")
				if !noTrunc && len(by) > 45 {
					by = by[:44] + "…"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", id, since(h.Created.Time), by,
					units.HumanSizeWithPrecision(float64(sizes[i]), 3), h.Comment)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&noTrunc, "no-trunc", false, "do not truncate output")
	return cmd
}

// image opens the store root and finds the image called name.
func (g *globals) image(name string) (*system.Root, *store.Image, error) {
	r, err := g.open()
	if err != nil {
		return nil, nil, err
	}
	img, err := resolve(r.Store, name)
	return r, img, err
}

func resolve(s *store.Store, name string) (*store.Image, error) {
	img, err := s.Resolve(name)
	if err != nil {
		return nil, fmt.Errorf("%w (lbuild images lists the store)", err)
	}
	return img, nil
}

// inspectJSON is shaped like docker image inspect's output.
type inspectJSON struct {
	ID            string       `json:"Id"`
	RepoTags      []string     `json:"RepoTags"`
	RepoDigests   []string     `json:"RepoDigests"`
	Created       string       `json:"Created"`
	Author        string       `json:"Author"`
	Config        v1.Config    `json:"Config"`
	Architecture  string       `json:"Architecture"`
	Os            string       `json:"Os"`
	Size          int64        `json:"Size"`
	RootFS        inspectRoot  `json:"RootFS"`
	History       []v1.History `json:"History"`
	ManifestDigst string       `json:"ManifestDigest"`
}

type inspectRoot struct {
	Type   string   `json:"Type"`
	Layers []string `json:"Layers"`
}

func newInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect IMAGE...",
		Short: "Show images as JSON (shaped like docker image inspect)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.open()
			if err != nil {
				return err
			}
			out := []inspectJSON{}
			for _, a := range args {
				img, err := resolve(r.Store, a)
				if err != nil {
					return err
				}
				layers := make([]string, len(img.Config.RootFS.DiffIDs))
				for i, d := range img.Config.RootFS.DiffIDs {
					layers[i] = d.String()
				}
				tags := append([]string{}, img.Refs...)
				out = append(out, inspectJSON{
					ID: img.ID.String(), RepoTags: tags, RepoDigests: []string{},
					Created: img.Config.Created.Time.UTC().Format(time.RFC3339Nano), Author: img.Config.Author,
					Config: img.Config.Config, Architecture: img.Config.Architecture, Os: img.Config.OS,
					Size: imageSize(img), RootFS: inspectRoot{Type: "layers", Layers: layers},
					History: img.Config.History, ManifestDigst: img.Manifest.Digest.String(),
				})
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "    ")
			return enc.Encode(out)
		},
	}
}

func newTagCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "tag SOURCE TARGET",
		Short: "Give an image another name",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, img, err := g.image(args[0])
			if err != nil {
				return err
			}
			return r.Store.Tag(args[1], img)
		},
	}
}

func newRmiCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rmi IMAGE...",
		Short: "Remove images (a name removes that tag; an ID removes the image)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.open()
			if err != nil {
				return err
			}
			inUse, err := container.New(r).Images()
			if err != nil {
				return err
			}
			// As docker: every argument is tried; each failure is one line
			// and the exit code is 1 if any failed.
			var errs []error
			for _, a := range args {
				if err := rmi(cmd.OutOrStdout(), r, inUse, a, force); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove an image with several tags by ID, or one a container uses")
	return cmd
}

// rmi removes one name or image, as docker rmi does: a name untags it (and
// deletes the image when it was its last name); an ID deletes the image
// (with several names only with force).
func rmi(out io.Writer, r *system.Root, inUse map[v1.Hash][]string, a string, force bool) error {
	img, err := resolve(r.Store, a)
	if err != nil {
		return err
	}
	// An image a container stands on loses its last name or goes only with -f.
	if ctrs := inUse[img.ID]; len(ctrs) > 0 && !force && (len(img.Refs) <= 1 || !slices.Contains(img.Refs, store.NormalizeRef(a))) {
		return fmt.Errorf("image %s is used by container %s: remove the container (lbuild rm) first, or pass -f", a, strings.Join(ctrs, ", "))
	}
	untagged := 0
	for _, ref := range img.Refs {
		if ref == a || ref == store.NormalizeRef(a) {
			if err := r.Store.Untag(ref); err != nil {
				return err
			}
			untagged++
			fmt.Fprintf(out, "Untagged: %s\n", ref)
		}
	}
	if untagged > 0 && len(img.Refs) > untagged {
		return nil // other names keep the image
	}
	if untagged == 0 && len(img.Refs) > 1 && !force {
		return fmt.Errorf("image %s is tagged %s: remove the tags, or pass -f", shortID(img.ID), strings.Join(img.Refs, ", "))
	}
	// Untagging the last name may already have dropped the index entry.
	if err := r.Store.Remove(img); err != nil && !(untagged > 0 && errors.Is(err, store.ErrNotFound)) {
		return err
	}
	fmt.Fprintf(out, "Deleted: %s\n", img.ID)
	return nil
}
