package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
)

func newPsCmd(g *globals) *cobra.Command {
	var all, quiet bool
	cmd := &cobra.Command{
		Use:   "ps [-a]",
		Short: "List containers (running ones; -a for all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.containers(cmd.Context())
			if err != nil {
				return err
			}
			ctrs, err := r.List(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 3, ' ', 0)
			if !quiet {
				fmt.Fprintln(w, "CONTAINER ID\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tPORTS\tNAMES")
			}
			for _, c := range ctrs {
				if !all && !c.Running() {
					continue
				}
				if quiet {
					fmt.Fprintln(w, c.ShortID())
					continue
				}
				command := strings.Join(c.Args, " ")
				if len(command) > 20 {
					command = command[:19] + "…"
				}
				fmt.Fprintf(w, "%s\t%s\t%q\t%s\t%s\t%s\t%s\n", c.ShortID(), c.Image, command, since(c.Created), containerStatus(c), containerPorts(c), c.Name)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "show all containers (default: running only)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "only show container IDs")
	return cmd
}

// containerPorts is docker's PORTS column: the published ports of a
// running container, "127.0.0.1:8080->80/tcp, …".
func containerPorts(c *container.Container) string {
	if !c.Running() {
		return ""
	}
	s := make([]string, len(c.Ports))
	for i, p := range c.Ports {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// containerStatus is docker's STATUS column: "Up 5 seconds", "Exited (0) 3
// minutes ago", "Created".
func containerStatus(c *container.Container) string {
	switch c.Status {
	case container.StatusRunning:
		return "Up " + units.HumanDuration(time.Since(c.Started))
	case container.StatusExited:
		code := fmt.Sprint(c.ExitCode)
		if c.ExitCode < 0 {
			code = "unknown"
		}
		return fmt.Sprintf("Exited (%s) %s", code, since(c.Finished))
	}
	return "Created"
}
