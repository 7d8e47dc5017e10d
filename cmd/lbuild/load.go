package main

import (
	"errors"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/transfer"
)

func newLoadCmd(g *globals) *cobra.Command {
	var (
		input string
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "load [flags]",
		Short: "Load images from a docker-archive or OCI archive",
		Long: `Load images from a tar archive (plain or gzip-compressed): a docker-archive
(docker save, podman save, skopeo docker-archive:) or an OCI archive (a tar
of an OCI layout). Blobs the store already has are not stored again; images
are named as the archive names them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = cmd.InOrStdin()
			if input != "" && input != "-" {
				f, err := os.Open(input)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			} else if f, ok := in.(*os.File); ok && isTerminal(f) {
				return errors.New("load: no archive on stdin: pass -i FILE")
			}
			r, err := g.open()
			if err != nil {
				return err
			}
			release, err := r.Lease() // a concurrent prune never takes blobs it stores
			if err != nil {
				return err
			}
			defer release()
			opts := []transfer.Opt{}
			if !quiet {
				opts = append(opts, transfer.WithProgress(cmd.OutOrStdout()))
			}
			_, err = transfer.Load(cmd.Context(), r.Store, in, opts...)
			return err
		},
	}
	cmd.Flags().StringVarP(&input, "input", "i", "", "archive to read (default: stdin)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing")
	return cmd
}
