package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
	"github.com/lbuild/lbuild/system"
)

func newDuCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "du",
		Short: "Show the store's disk use: images (shared layers counted once), containers, build cache",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runDu(cmd, g) },
	}
}

// newSystemCmd is "lbuild system df", docker's name for du.
func newSystemCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "system", Short: "Store-wide commands"}
	cmd.AddCommand(&cobra.Command{
		Use:   "df",
		Short: "Show the store's disk use (same as lbuild du)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runDu(cmd, g) },
	}, newPruneCmd(g), newFsckCmd(g))
	return cmd
}

func size(n int64) string { return units.HumanSizeWithPrecision(float64(n), 3) }

func runDu(cmd *cobra.Command, g *globals) error {
	r, err := g.open()
	if err != nil {
		return err
	}
	du, err := container.New(r).DiskUsage(cmd.Context())
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, "Images (each layer blob stored once, however many images use it):")
	w := tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	fmt.Fprintln(w, "  IMAGE\tIMAGE ID\tSIZE\tSHARED SIZE\tUNIQUE SIZE\tCONTAINERS")
	for _, u := range du.Images {
		name := "<none>"
		if len(u.Image.Refs) > 0 {
			name = strings.Join(u.Image.Refs, ", ")
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%d\n", name, shortID(u.Image.ID), size(u.Size), size(u.Shared), size(u.Unique), u.Containers)
	}
	w.Flush()
	fmt.Fprintf(out, "  Total: %s on disk for %d images (%s if nothing were shared)\n", size(du.ImagesTotal), len(du.Images), size(du.ImagesSum))
	fmt.Fprintf(out, "  Layer snapshots: %d, %s (each made once, unpacked or kept as a tar with an index, shared by builds and containers)\n\n", du.UnpackedLayers, size(du.UnpackedSize))

	fmt.Fprintln(out, "Containers (each container's own writable layer):")
	w = tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	fmt.Fprintln(w, "  CONTAINER ID\tIMAGE\tSIZE\tSTATUS\tNAMES")
	for _, c := range du.Containers {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", c.Container.ShortID(), c.Container.Image, size(c.Size), containerStatus(c.Container), c.Container.Name)
	}
	w.Flush()
	fmt.Fprintf(out, "  Total: %s in %d containers\n\n", size(du.ContainersTotal), len(du.Containers))

	fmt.Fprintln(out, "Build cache:")
	w = tabwriter.NewWriter(out, 0, 8, 3, ' ', 0)
	fmt.Fprintf(w, "  step records and file index\t%s\n", size(du.CacheRecords))
	fmt.Fprintf(w, "  RUN cache mounts\t%s\n", size(du.CacheMounts))
	fmt.Fprintf(w, "  blobs no image uses (kept for the cache)\t%s\n", size(du.CacheBlobs))
	w.Flush()

	// What prune could free, without removing anything.
	safe, err := prune(cmd, r, system.PruneOptions{DryRun: true, Dangling: true})
	if err != nil {
		return err
	}
	all, err := prune(cmd, r, system.PruneOptions{DryRun: true, All: true, Mounts: true})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nReclaimable: %s by lbuild prune (%d layer snapshots, %d blobs), %s by lbuild prune --all --mounts\n",
		size(safe.Freed()), safe.Snapshots, safe.Blobs, size(all.Freed()))
	fmt.Fprintf(out, "Total on disk: %s\n", size(du.Total))
	return nil
}
