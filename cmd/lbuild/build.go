package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/lbuild/lbuild/builder"
	"github.com/lbuild/lbuild/builder/progress"
	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/system"
	"github.com/lbuild/lbuild/transfer"
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
	push      bool
	outputs   []string
	platform  string
	insecure  []string
	explain   string
	epoch     string
	check     bool
	cache     cacheFlags
	parallel  int
}

func (f *buildFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "Dockerfile (default CONTEXT/Dockerfile)")
	fl.StringArrayVarP(&f.tags, "tag", "t", nil, "name and optionally a tag (name:tag); repeatable")
	fl.StringArrayVar(&f.buildArgs, "build-arg", nil, "build-time variable KEY=VALUE (KEY alone takes it from the environment); repeatable")
	fl.StringVar(&f.target, "target", "", "stage to build (default: the last)")
	fl.BoolVar(&f.noCache, "no-cache", false, "do not use the cache")
	fl.StringVar(&f.progress, "progress", "auto", "progress output: auto, plain or tty")
	fl.StringVar(&f.network, "network", "default", "network for RUN steps: default (own namespace, outbound through slirp4netns, no host loopback), host or none")
	fl.StringArrayVar(&f.secrets, "secret", nil, "secret for RUN --mount=type=secret: id=ID,src=PATH; repeatable")
	fl.StringVar(&f.runtime, "runtime", "", "OCI runtime for RUN (default: runc)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "print only the image ID")
	fl.BoolVar(&f.push, "push", false, "push the result to each tag's registry (same as --output type=registry)")
	fl.StringArrayVarP(&f.outputs, "output", "o", nil, "also export the result: type=oci,dest=DIR | type=docker,dest=FILE | type=registry")
	fl.StringVar(&f.platform, "platform", "", "platform for FROM images pulled from a registry (default linux/"+goruntime.GOARCH+")")
	fl.StringArrayVar(&f.insecure, "insecure-registry", nil, "registry HOST[:PORT] spoken to over plain http (repeatable)")
	registerExplain(fl, &f.explain)
	fl.StringVar(&f.epoch, "source-date-epoch", "", "build time in seconds since 1970, or \"now\" for the wall clock (default: --build-arg SOURCE_DATE_EPOCH, else $SOURCE_DATE_EPOCH, else the git commit time of the context, else 0)")
	fl.BoolVar(&f.check, "check-reproducible", false, "build a second time without the cache and fail, naming the first difference, if the images differ")
	f.cache.register(fl)
	fl.IntVar(&f.parallel, "parallel", 0, "how many independent stages build at the same time (0: the number of CPUs; 1: one after another)")
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
	var err error
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
		Platform:   f.platform,
		Insecure:   f.insecure,
		Parallel:   f.parallel,
	}
	if f.parallel < 0 {
		return fmt.Errorf("--parallel %d: give 0 (the number of CPUs) or more", f.parallel)
	}
	if opts.Explain, err = explainMode(f.explain); err != nil {
		return err
	}
	outs, err := parseOutputs(f.outputs, f.push)
	if err != nil {
		return err
	}
	if len(outs) > 0 && len(f.tags) == 0 {
		for _, o := range outs {
			if o.typ == "registry" {
				return fmt.Errorf("--push needs a name to push to: add -t REGISTRY/NAME:TAG")
			}
		}
	}
	if f.network != "default" && f.network != "host" && f.network != "none" {
		return fmt.Errorf("--network=%s: use default, host or none", f.network)
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
	switch env, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); {
	case cmd.Flags().Changed("source-date-epoch"):
		if _, _, err := builder.ParseSourceDateEpoch(f.epoch); err != nil {
			return fmt.Errorf("--source-date-epoch: %w", err)
		}
		opts.SourceDateEpoch = f.epoch
	case opts.BuildArgs["SOURCE_DATE_EPOCH"] != "":
		if _, _, err := builder.ParseSourceDateEpoch(opts.BuildArgs["SOURCE_DATE_EPOCH"]); err != nil {
			return fmt.Errorf("--build-arg SOURCE_DATE_EPOCH: %w", err)
		}
	case ok && env != "":
		if _, _, err := builder.ParseSourceDateEpoch(env); err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		opts.SourceDateEpoch = env
	}
	spec := opts.SourceDateEpoch
	if spec == "" {
		spec = opts.BuildArgs["SOURCE_DATE_EPOCH"]
	}
	if f.check && strings.TrimSpace(spec) == builder.EpochNow {
		return fmt.Errorf("--check-reproducible needs a fixed build time: drop --source-date-epoch %s", builder.EpochNow)
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
	bc, err := importCache(cmd, &f.cache, f.insecure, &opts)
	if err != nil {
		return err
	}
	r, err := g.openRecovered(cmd.Context())
	if err != nil {
		return err
	}
	if opts.Explain {
		bc.importInputs(cmd, r)
	}
	// Hold the root against prune until the exports are written (the
	// build's own lease ends with it); the automatic GC runs after.
	release, err := r.Lease()
	if err != nil {
		return err
	}
	if err := buildAndExport(cmd, r, f, opts, bc, outs, out); err != nil {
		release()
		return err
	}
	release()
	autoGC(cmd, r)
	return nil
}

// buildAndExport builds, checks reproducibility if asked, prints the result
// and writes the cache and image exports.
func buildAndExport(cmd *cobra.Command, r *system.Root, f *buildFlags, opts builder.Options, bc *buildCache, outs []output, out io.Writer) error {
	res, err := builder.Build(cmd.Context(), r, opts)
	if err != nil {
		return err
	}
	if err := printExplain(cmd.OutOrStdout(), f.explain, res.Steps); err != nil {
		return err
	}
	if f.check {
		if !f.quiet {
			fmt.Fprintln(out, "checking that the build is reproducible: building again without the cache")
			if opts.Progress, err = progress.New(f.progress, out); err != nil {
				return err
			}
		}
		if err := builder.CheckReproducible(cmd.Context(), r, opts, res); err != nil {
			return err
		}
		if !f.quiet {
			fmt.Fprintln(out, "the build is reproducible: both builds gave image", res.Image.ID)
		}
	}
	if f.quiet {
		fmt.Fprintln(cmd.OutOrStdout(), res.Image.ID)
	} else {
		fmt.Fprintf(out, "writing image %s\n", res.Image.ID)
		for _, t := range f.tags {
			fmt.Fprintf(out, "naming to %s\n", t)
		}
	}
	cacheOut := out
	if f.quiet {
		cacheOut = discard{}
	}
	if err := bc.export(cmd, r, res, cacheOut); err != nil {
		return err
	}
	return export(cmd, r.Store, res.Image, f, outs)
}

// autoGC keeps a root with a gc.keep-storage bound (ROOT/config.json or
// LBUILD_GC_KEEP) under it after each build, as "lbuild prune
// --keep-storage" would; it skips when other builds are running (the last
// one to finish trims) and never fails the build.
func autoGC(cmd *cobra.Command, r *system.Root) {
	bound, err := r.AutoGCBound()
	if err != nil {
		logrus.Warnf("automatic GC: %v", err)
		return
	}
	if bound == 0 {
		return
	}
	rep, err := prune(cmd, r, system.PruneOptions{KeepStorage: bound, NoWait: true})
	switch {
	case errors.Is(err, system.ErrBusy):
		logrus.Debugf("automatic GC skipped: %v", err)
	case err != nil:
		logrus.Warnf("automatic GC: %v", err)
	case rep.Freed() > 0:
		logrus.Debugf("automatic GC freed %s", size(rep.Freed()))
	}
}

// output is one --output of build.
type output struct{ typ, dest string }

// parseOutputs reads BuildKit's --output spelling: type=oci,dest=DIR,
// type=docker,dest=FILE, type=registry (and --push).
func parseOutputs(specs []string, push bool) ([]output, error) {
	var outs []output
	if push {
		outs = append(outs, output{typ: "registry"})
	}
	for _, spec := range specs {
		var o output
		for _, part := range strings.Split(spec, ",") {
			k, v, _ := strings.Cut(part, "=")
			switch k {
			case "type":
				o.typ = v
			case "dest":
				o.dest = v
			default:
				return nil, fmt.Errorf("--output %s: unknown field %q (use type=oci|docker|registry,dest=PATH)", spec, k)
			}
		}
		switch o.typ {
		case "oci", "docker":
			if o.dest == "" {
				return nil, fmt.Errorf("--output %s: type=%s needs dest=PATH", spec, o.typ)
			}
		case "registry":
		default:
			return nil, fmt.Errorf("--output %s: unknown type %q (use oci, docker or registry)", spec, o.typ)
		}
		outs = append(outs, o)
	}
	return outs, nil
}

// export sends a built image where --output and --push say.
func export(cmd *cobra.Command, st *store.Store, img *store.Image, f *buildFlags, outs []output) error {
	ctx := cmd.Context()
	opts := []transfer.Opt{transfer.WithProgress(cmd.ErrOrStderr()), transfer.WithInsecure(f.insecure...)}
	for _, o := range outs {
		switch o.typ {
		case "registry":
			for _, t := range f.tags {
				if _, err := transfer.Push(ctx, st, img, t, opts...); err != nil {
					return fmt.Errorf("push %s: %w", t, err)
				}
			}
		case "oci":
			ref := ""
			if len(f.tags) > 0 {
				ref = f.tags[0]
			}
			if _, err := transfer.SaveOCILayout(ctx, st, img, ref, o.dest, opts...); err != nil {
				return fmt.Errorf("export to %s: %w", o.dest, err)
			}
		case "docker":
			if err := saveFile(ctx, st, []*store.Image{img}, f.tags, o.dest, transfer.FormatDocker, opts...); err != nil {
				return fmt.Errorf("export to %s: %w", o.dest, err)
			}
		}
	}
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
