package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
)

func newRunCmd(g *globals) *cobra.Command {
	var (
		opts        container.Options
		detach      bool
		interactive bool
	)
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]",
		Short: "Run a command in a new container",
		Long: `Run a command in a new container: the image's layers, unpacked once (or
mounted straight from their stored blobs) and shared read-only by every
container of the image, with one writable layer of the container's own on
top (nothing is copied at start).

In the foreground the container's output goes to the terminal and to its log,
and ^C stops it; lbuild exits with the container's exit code. With -d a small
lbuild process waits for the container in the background and records its
exit; lbuild prints the container ID.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.containers(cmd.Context())
			if err != nil {
				return err
			}
			opts.Image, opts.Cmd = args[0], args[1:]
			opts.Env = envFromHost(opts.Env)
			ctx := cmd.Context()
			c, err := r.Create(ctx, opts)
			if err != nil {
				return err
			}
			if detach {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				shim := []string{exe, "--root", r.Root().Dir, "--snapshotter", g.snapshotter, "__shim", c.ID}
				if err := r.StartDetached(ctx, c.ID, shim); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), c.ID)
				return nil
			}
			stdio := container.Stdio{Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()}
			if interactive {
				stdio.Stdin = os.Stdin
			}
			code, err := r.Run(ctx, c.ID, stdio)
			if err != nil {
				return err
			}
			if code != 0 {
				os.Exit(code)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // flags after IMAGE belong to the command
	f.StringVar(&opts.Name, "name", "", "name of the container (default: a random name)")
	f.BoolVarP(&detach, "detach", "d", false, "run in the background and print the container ID")
	f.BoolVar(&opts.AutoRemove, "rm", false, "remove the container when it exits")
	f.BoolVarP(&interactive, "interactive", "i", false, "keep stdin attached (foreground only)")
	f.StringArrayVarP(&opts.Env, "env", "e", nil, "set KEY=VALUE (KEY alone takes it from the environment); repeatable")
	f.StringVarP(&opts.Workdir, "workdir", "w", "", "working directory in the container")
	f.StringVarP(&opts.User, "user", "u", "", "user[:group] (names or numeric ids)")
	f.StringVar(&opts.Network, "network", "default", "network: default (own namespace, outbound through slirp4netns, no host loopback), host or none")
	f.StringArrayVarP(&opts.Ports, "publish", "p", nil,
		"publish a container port on the host, [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]; IP defaults to 127.0.0.1 (docker's default is 0.0.0.0); repeatable")
	f.StringArrayVarP(&opts.Binds, "volume", "v", nil, "bind mount HOST:CONTAINER[:ro]; repeatable")
	f.StringVar(&opts.Runtime, "runtime", "", "OCI runtime (default: runc)")
	f.StringArrayVar(&opts.SecurityOpts, "security-opt", nil,
		"seccomp=unconfined runs without Docker's default seccomp profile (the only option supported)")
	return cmd
}

// envFromHost completes "KEY" entries with the value from lbuild's own
// environment (dropped when unset), as docker run -e does.
func envFromHost(env []string) []string {
	var out []string
	for _, e := range env {
		if strings.Contains(e, "=") {
			out = append(out, e)
		} else if v, ok := os.LookupEnv(e); ok {
			out = append(out, e+"="+v)
		}
	}
	return out
}

// newShimCmd is the detached process "lbuild run -d" leaves behind: it runs
// the container's process and records its exit status.
func newShimCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "__shim ID",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Outlive the terminal and lbuild: only lbuild stop ends the container.
			signal.Ignore(os.Interrupt, syscall.SIGHUP, syscall.SIGTERM)
			r, err := g.open() // the "run -d" that started us has recovered the root
			if err != nil {
				return err
			}
			_, err = container.New(r).Run(context.Background(), args[0], container.Stdio{})
			return err
		},
	}
}
