package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/transfer"
)

func newPushCmd(g *globals) *cobra.Command {
	var (
		compression string
		insecure    []string
	)
	cmd := &cobra.Command{
		Use:   "push [flags] IMAGE [REF]",
		Short: "Push an image to a registry (only the blobs it lacks)",
		Long: `Push IMAGE from the store to the registry as REF (default: IMAGE itself).

Blobs the registry has are not sent, and blobs it has in another repository
are mounted from there. lbuild's uncompressed layers are compressed on the
way out (--compression gzip, the default, or zstd[,level=N]) once per layer
and setting: the compressed blob is kept, so pushing again neither
recompresses nor re-uploads.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := transfer.ParseCompression(compression); err != nil {
				return err
			}
			r, err := g.open()
			if err != nil {
				return err
			}
			img, err := resolve(r.Store, args[0])
			if err != nil {
				return err
			}
			ref := args[0]
			if len(args) == 2 {
				ref = args[1]
			} else if !hasRef(img, ref) {
				return fmt.Errorf("push %s: name the destination: lbuild push %s REGISTRY/REPO:TAG", ref, ref)
			}
			_, err = transfer.Push(cmd.Context(), r.Store, img, store.NormalizeRef(ref),
				transfer.WithCompression(compression),
				transfer.WithInsecure(insecure...),
				transfer.WithProgress(cmd.OutOrStdout()))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&compression, "compression", "gzip", "compression of uncompressed layers: gzip[,level=N] or zstd[,level=N]")
	f.StringArrayVar(&insecure, "insecure-registry", nil, "registry HOST[:PORT] to reach over plain http or unverified TLS (repeatable)")
	return cmd
}

// hasRef reports whether name is one of img's refs (as given or with
// ":latest" added).
func hasRef(img *store.Image, name string) bool {
	for _, r := range img.Refs {
		if r == name || r == store.NormalizeRef(name) {
			return true
		}
	}
	return false
}

func defaultArch() string { return runtime.GOARCH }
