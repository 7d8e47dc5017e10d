package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/lbuild/lbuild/container"
)

func newStopCmd(g *globals) *cobra.Command {
	var seconds int
	cmd := &cobra.Command{
		Use:   "stop [-t SECONDS] CONTAINER...",
		Short: "Stop running containers (stop signal, then SIGKILL after a timeout)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.containers(cmd.Context())
			if err != nil {
				return err
			}
			// All at once: each may wait out its timeout.
			var eg errgroup.Group
			for _, a := range args {
				eg.Go(func() error {
					return r.Stop(cmd.Context(), a, time.Duration(seconds)*time.Second)
				})
			}
			err = eg.Wait()
			for _, a := range args {
				fmt.Fprintln(cmd.OutOrStdout(), a)
			}
			return err
		},
	}
	cmd.Flags().IntVarP(&seconds, "time", "t", int(container.StopTimeout/time.Second), "seconds to wait before killing the container")
	return cmd
}
