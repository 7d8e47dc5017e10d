package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/builder"
	"github.com/lbuild/lbuild/builder/progress"
)

type buildFlags struct {
	file      string
	tags      []string
	buildArgs []string
	target    string
	noCache   bool
	progress  string
	network   string
	secrets   []string
	runtime   string
	quiet     bool
}

func (f *buildFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "Dockerfile (default CONTEXT/Dockerfile)")
	fl.StringArrayVarP(&f.tags, "tag", "t", nil, "name and optionally a tag (name:tag); repeatable")
	fl.StringArrayVar(&f.buildArgs, "build-arg", nil, "build-time variable KEY=VALUE (KEY alone takes it from the environment); repeatable")
	fl.StringVar(&f.target, "target", "", "stage to build (default: the last)")
	fl.BoolVar(&f.noCache, "no-cache", false, "do not use the cache")
	fl.StringVar(&f.progress, "progress", "auto", "progress output: auto, plain or tty")
	fl.StringVar(&f.network, "network", "host", "network for RUN steps: host or none")
	fl.StringArrayVar(&f.secrets, "secret", nil, "secret for RUN --mount=type=secret: id=ID,src=PATH; repeatable")
	fl.StringVar(&f.runtime, "runtime", "", "OCI runtime for RUN (default: runc)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "print only the image ID")
}

func newBuildCmd(g *globals) *cobra.Command {
	f := &buildFlags{}
	cmd := &cobra.Command{
		Use:   "build [flags] CONTEXT",
		Short: "Build an image from a Dockerfile",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return runBuild(cmd, g, f, args) },
	}
	f.register(cmd)
	return cmd
}

func runBuild(cmd *cobra.Command, g *globals, f *buildFlags, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("build takes exactly one context directory, e.g. lbuild build -t app:1 .")
	}
	opts := builder.Options{
		ContextDir: args[0],
		Dockerfile: f.file,
		Tags:       f.tags,
		Target:     f.target,
		NoCache:    f.noCache,
		Network:    f.network,
		Runtime:    f.runtime,
		BuildArgs:  map[string]string{},
		Secrets:    map[string]string{},
	}
	if f.network != "host" && f.network != "none" {
		return fmt.Errorf("--network=%s: use host or none", f.network)
	}
	for _, a := range f.buildArgs {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			var set bool
			if v, set = os.LookupEnv(k); !set {
				continue
			}
		}
		opts.BuildArgs[k] = v
	}
	for _, s := range f.secrets {
		id, src := "", ""
		for _, part := range strings.Split(s, ",") {
			k, v, _ := strings.Cut(part, "=")
			switch k {
			case "id":
				id = v
			case "src", "source":
				src = v
			default:
				return fmt.Errorf("--secret %s: unknown field %q (use id=ID,src=PATH)", s, k)
			}
		}
		if id == "" || src == "" {
			return fmt.Errorf("--secret %s: use id=ID,src=PATH", s)
		}
		abs, err := filepath.Abs(src)
		if err != nil {
			return err
		}
		opts.Secrets[id] = abs
	}
	out := cmd.ErrOrStderr()
	p, err := progress.New(f.progress, out)
	if err != nil {
		return err
	}
	opts.Progress = p
	if f.quiet {
		opts.Progress = progress.NewPlain(discard{})
	}
	r, err := g.open()
	if err != nil {
		return err
	}
	res, err := r.Build(cmd.Context(), opts)
	if err != nil {
		return err
	}
	if f.quiet {
		fmt.Fprintln(cmd.OutOrStdout(), res.Image.ID)
		return nil
	}
	fmt.Fprintf(out, "writing image %s\n", res.Image.ID)
	for _, t := range f.tags {
		fmt.Fprintf(out, "naming to %s\n", t)
	}
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
