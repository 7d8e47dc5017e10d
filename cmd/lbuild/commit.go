package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
)

func newCommitCmd(g *globals) *cobra.Command {
	var opts container.CommitOptions
	var pause bool
	cmd := &cobra.Command{
		Use:   "commit [flags] CONTAINER [IMAGE]",
		Short: "Make an image of a container: its image plus the container's layer",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.containers(cmd.Context())
			if err != nil {
				return err
			}
			opts.NoPause = !pause
			ref := ""
			if len(args) == 2 {
				ref = args[1]
			}
			img, err := r.Commit(cmd.Context(), args[0], ref, opts)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), img.ID)
			return nil
		},
	}
	cmd.Flags().StringVarP(&opts.Author, "author", "a", "", "author of the new layer")
	cmd.Flags().StringVarP(&opts.Message, "message", "m", "", "commit message (the history entry's comment)")
	cmd.Flags().BoolVarP(&pause, "pause", "p", true, "pause a running container while its layer is read")
	return cmd
}
