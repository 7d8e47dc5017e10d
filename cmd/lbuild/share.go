package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/store"
)

func newShareCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "share IMAGE...",
		Short: "Show which layers several images share",
		Long: `Print a table of the images' layers, one row per layer (diff ID, size,
the step that made it) and one column per image, marking which image has it.
A layer is shared when the images were built by the same steps up to it: it
is then stored once, and unpacked (or mounted from its blob) once, for all
of them.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.open()
			if err != nil {
				return err
			}
			t, err := r.Share(args)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprint(w, "LAYER\tSIZE\tCREATED BY")
			for i, img := range t.Images {
				fmt.Fprintf(w, "\t%s", imageLabel(img, args[i]))
			}
			fmt.Fprintln(w)
			var stored, unshared int64
			shared := 0
			for _, l := range t.Layers {
				by := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(l.CreatedBy), "# buildkit"))
				if len(by) > 40 {
					by = by[:39] + "…"
				}
				fmt.Fprintf(w, "%s\t%s\t%s", shortID(l.DiffID), units.HumanSizeWithPrecision(float64(l.Size), 3), by)
				n := 0
				for _, in := range l.In {
					mark := "-"
					if in {
						mark = "x"
						n++
					}
					fmt.Fprintf(w, "\t%s", mark)
				}
				fmt.Fprintln(w)
				stored += l.Size
				unshared += l.Size * int64(n)
				if n > 1 {
					shared++
				}
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "\n%d layers, %d shared by more than one image: %s stored once (%s if every image kept its own copy)\n",
				len(t.Layers), shared, units.HumanSizeWithPrecision(float64(stored), 3), units.HumanSizeWithPrecision(float64(unshared), 3))
			return nil
		},
	}
}

// imageLabel names an image column: the name it was asked by, else its first
// ref or its short ID.
func imageLabel(img *store.Image, asked string) string {
	for _, r := range img.Refs {
		if r == asked || r == store.NormalizeRef(asked) {
			return strings.TrimSuffix(r, ":latest")
		}
	}
	if len(img.Refs) > 0 {
		return strings.TrimSuffix(img.Refs[0], ":latest")
	}
	return shortID(img.ID)
}
