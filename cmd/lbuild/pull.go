package main

import (
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/transfer"
)

func newPullCmd(g *globals) *cobra.Command {
	var (
		platform string
		insecure []string
	)
	cmd := &cobra.Command{
		Use:   "pull [flags] REF",
		Short: "Pull an image from a registry (only the layers the store lacks)",
		Long: `Pull an image from a registry into the store and name it REF.

Layers the store already has are not fetched; the others are fetched in
parallel and verified by digest. Credentials come from the docker config
(~/.docker/config.json, $DOCKER_CONFIG; see lbuild login). localhost and
127.0.0.1 are reached over plain http; --insecure-registry adds hosts.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.open()
			if err != nil {
				return err
			}
			release, err := r.Lease() // a concurrent prune never takes blobs it stores
			if err != nil {
				return err
			}
			defer release()
			_, err = transfer.Pull(cmd.Context(), r.Store, args[0],
				transfer.WithPlatform(platform),
				transfer.WithInsecure(insecure...),
				transfer.WithProgress(cmd.OutOrStdout()))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&platform, "platform", "", "platform to pull from a manifest list, os/arch[/variant] (default linux/"+defaultArch()+")")
	f.StringArrayVar(&insecure, "insecure-registry", nil, "registry HOST[:PORT] to reach over plain http or unverified TLS (repeatable)")
	return cmd
}
