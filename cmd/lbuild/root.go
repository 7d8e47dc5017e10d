package main

import (
	"context"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/container"
	"github.com/lbuild/lbuild/system"
)

// globals are the flags every subcommand shares.
type globals struct {
	root        string
	snapshotter string
	debug       bool
}

// defaultRoot is /var/lib/lbuild for root, $XDG_DATA_HOME/lbuild otherwise;
// LBUILD_ROOT overrides both.
func defaultRoot() string {
	if r := os.Getenv("LBUILD_ROOT"); r != "" {
		return r
	}
	if os.Geteuid() == 0 {
		return "/var/lib/lbuild"
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "lbuild")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "lbuild")
}

// open opens the store root and recovers nothing: the commands that only
// read or move images never touch runtime state, so a running build cannot
// make them fail.
func (g *globals) open() (*system.Root, error) {
	return system.Open(g.root, system.WithSnapshotter(g.snapshotter))
}

// openRecovered opens the store root and first cleans up after lbuild
// processes that died (container.Recover): for the commands that create
// runtime state or snapshots.
func (g *globals) openRecovered(ctx context.Context) (*system.Root, error) {
	r, err := g.open()
	if err != nil {
		return nil, err
	}
	if err := container.Recover(ctx, r); err != nil {
		return nil, err
	}
	return r, nil
}

// containers opens the root (recovered) and its container manager.
func (g *globals) containers(ctx context.Context) (*container.Manager, error) {
	r, err := g.openRecovered(ctx)
	if err != nil {
		return nil, err
	}
	return container.New(r), nil
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	bo := &buildFlags{}
	cmd := &cobra.Command{
		Use:   "lbuild [flags] CONTEXT",
		Short: "Build container images from Dockerfiles with a chained layer cache",
		Long: `lbuild builds OCI images from Dockerfiles. Each step's cache key chains its
parent's key with the instruction and its inputs, so unchanged steps never run
twice and images that begin with the same steps share those layers.

"lbuild -f Dockerfile -t app:1 ." is short for "lbuild build -f Dockerfile -t app:1 .".`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.MaximumNArgs(1),
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			logrus.SetOutput(os.Stderr)
			logrus.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
			if g.debug {
				logrus.SetLevel(logrus.DebugLevel)
			}
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return runBuild(cmd, g, bo, args)
		},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&g.root, "root", defaultRoot(), "store root (env LBUILD_ROOT)")
	pf.StringVar(&g.snapshotter, "snapshotter", "auto", "snapshot driver: auto, overlay or copy")
	pf.BoolVar(&g.debug, "debug", false, "log debug messages")
	bo.register(cmd)
	cmd.AddCommand(newBuildCmd(g), newImagesCmd(g), newHistoryCmd(g), newInspectCmd(g), newTagCmd(g), newRmiCmd(g),
		newPullCmd(g), newPushCmd(g), newSaveCmd(g), newLoadCmd(g), newLoginCmd(g), newLogoutCmd(g),
		newRunCmd(g), newShimCmd(g), newPsCmd(g), newStopCmd(g), newRmCmd(g), newLogsCmd(g), newExecCmd(g),
		newDiffCmd(g), newCommitCmd(g), newShareCmd(g), newDuCmd(g), newSystemCmd(g), newPruneCmd(g))
	return cmd
}
