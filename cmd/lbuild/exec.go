package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
)

func newExecCmd(g *globals) *cobra.Command {
	var (
		opts        container.ExecOptions
		interactive bool
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] CONTAINER COMMAND [ARG...]",
		Short: "Run a command in a running container",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.containers(cmd.Context())
			if err != nil {
				return err
			}
			opts.Args = args[1:]
			opts.Env = envFromHost(opts.Env)
			opts.Stdout, opts.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if interactive {
				opts.Stdin = os.Stdin
			}
			err = r.Exec(cmd.Context(), args[0], opts)
			var ee *container.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.Code)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.StringArrayVarP(&opts.Env, "env", "e", nil, "set KEY=VALUE; repeatable")
	f.StringVarP(&opts.User, "user", "u", "", "user[:group] (default: the container's)")
	f.StringVarP(&opts.Workdir, "workdir", "w", "", "working directory (default: the container's)")
	f.BoolVarP(&interactive, "interactive", "i", false, "keep stdin attached")
	return cmd
}
