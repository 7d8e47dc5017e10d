package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
	"github.com/lbuild/lbuild/system"
)

func newPruneCmd(g *globals) *cobra.Command {
	var (
		all, mounts, dryRun bool
		keep                string
		filters             []string
	)
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove what no image, container or kept build cache needs (also: lbuild system prune)",
		Long: `Removes blobs, layer snapshots and step records that no image or container
needs (the dangling build cache: layers of steps no image uses), and
file-index entries of files that no longer exist; images' steps stay cached.
--all drops the whole build cache (images keep their layers);
--keep-storage trims it, least recently used first, until the root is under
SIZE; --filter until=DURATION drops cache not used for that long. Running
builds are waited for, never broken. Prints what it freed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// Plain prune drops the dangling build cache, as docker's; with
			// a bound or a filter it drops only what they say.
			opts := system.PruneOptions{All: all, Mounts: mounts, DryRun: dryRun, Dangling: keep == "" && len(filters) == 0}
			if keep != "" {
				n, err := system.ParseSize(keep)
				if err != nil {
					return fmt.Errorf("--keep-storage: %w", err)
				}
				opts.KeepStorage = n
			}
			for _, f := range filters {
				v, ok := strings.CutPrefix(f, "until=")
				if !ok {
					return fmt.Errorf("--filter %q: only until=DURATION (e.g. until=24h) is supported", f)
				}
				d, err := time.ParseDuration(v)
				if err != nil || d <= 0 {
					return fmt.Errorf("--filter %q: use a duration such as 24h or 30m", f)
				}
				opts.Until = d
			}
			r, err := g.openRecovered(cmd.Context())
			if err != nil {
				return err
			}
			rep, err := prune(cmd, r, opts)
			if err != nil {
				return err
			}
			verb := "Freed"
			if dryRun {
				verb = "Would free"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %d step records, %d blobs (%s), %d layer snapshots (%s), %d cache mounts (%s), %d file-index entries\n",
				verb, size(rep.Freed()), rep.Records, rep.Blobs, size(rep.BlobBytes), rep.Snapshots, size(rep.SnapshotBytes), rep.Mounts, size(rep.MountBytes), rep.FileIndexEntries)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&all, "all", "a", false, "drop the whole build cache too (step records and layers no image uses)")
	f.StringVar(&keep, "keep-storage", "", "trim the build cache, least recently used first, until the root takes at most SIZE (e.g. 10GB)")
	f.StringArrayVar(&filters, "filter", nil, "until=DURATION: drop build cache not used for that long")
	f.BoolVar(&mounts, "mounts", false, "also empty the RUN cache mounts")
	f.BoolVar(&dryRun, "dry-run", false, "list what would go and the bytes, remove nothing")
	return cmd
}

// prune runs system.Prune with the containers' roots.
func prune(cmd *cobra.Command, r *system.Root, opts system.PruneOptions) (*system.PruneReport, error) {
	opts.Containers = container.New(r).Roots
	return r.Prune(cmd.Context(), opts)
}

func newFsckCmd(g *globals) *cobra.Command {
	var repair bool
	cmd := &cobra.Command{
		Use:   "fsck",
		Short: "Verify the store: blob digests and sizes, images' blobs, records' layers, layer snapshots (an indexed layer's tar re-hashed)",
		Long: `Verifies every blob's digest, that every image's manifest, config and layers
exist, that every step record's layer exists, and that every layer snapshot is
complete and has its parent (an indexed layer's tar, its blob's file, is
re-hashed). Reports one problem per line and exits 1 if it
found any; --repair removes what is corrupt or dangling, so the next build
makes it again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.openRecovered(cmd.Context())
			if err != nil {
				return err
			}
			problems, err := r.Fsck(cmd.Context(), repair)
			if err != nil {
				return err
			}
			for _, p := range problems {
				fmt.Fprintln(cmd.OutOrStdout(), p)
			}
			switch {
			case len(problems) == 0:
				fmt.Fprintln(cmd.OutOrStdout(), "no problems found")
				return nil
			case repair:
				fmt.Fprintf(cmd.OutOrStdout(), "%d problems found and repaired\n", len(problems))
				return nil
			}
			return fmt.Errorf("%d problems found: run lbuild system fsck --repair to remove what is corrupt", len(problems))
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "remove what is corrupt or dangling")
	return cmd
}
