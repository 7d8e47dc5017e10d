package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/lbuild/lbuild/builder"
	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/parser"
	"github.com/lbuild/lbuild/remotecache"
	"github.com/lbuild/lbuild/system"
	"github.com/lbuild/lbuild/transfer"
)

// cacheFlags are build's --cache-from, --cache-to and --cache-dir.
type cacheFlags struct {
	from, to []string
	dir      string
}

func (f *cacheFlags) register(fl *pflag.FlagSet) {
	fl.StringArrayVar(&f.from, "cache-from", nil, "import a build cache: type=local,src=DIR | type=registry,ref=HOST/REPO:TAG (repeatable; a missing one is skipped with a warning)")
	fl.StringArrayVar(&f.to, "cache-to", nil, "export the build cache (every step of every stage): type=local,dest=DIR | type=registry,ref=HOST/REPO:TAG, with [,max-size=SIZE] (default 10GB) [,mounts=true] (RUN cache mounts too); repeatable")
	fl.StringVar(&f.dir, "cache-dir", "", "same as --cache-from type=local,src=DIR --cache-to type=local,dest=DIR")
}

// specs parses the flags.
func (f *cacheFlags) specs() (from, to []remotecache.Spec, err error) {
	for _, s := range f.from {
		sp, err := remotecache.ParseSpec(s, false)
		if err != nil {
			return nil, nil, err
		}
		from = append(from, sp)
	}
	for _, s := range f.to {
		sp, err := remotecache.ParseSpec(s, true)
		if err != nil {
			return nil, nil, err
		}
		to = append(to, sp)
	}
	if f.dir != "" {
		from = append(from, remotecache.Spec{Type: "local", Dir: f.dir})
		to = append(to, remotecache.Spec{Type: "local", Dir: f.dir})
	}
	return from, to, nil
}

// buildCache is the --cache-from of one build and where it exports to.
type buildCache struct {
	src   *remotecache.Source
	to    []remotecache.Spec
	warn  func(string)
	topts []transfer.Opt
}

// importCache reads the --cache-from caches (a missing or unreadable one
// is a one-line warning) and sets opts.CacheFrom.
func importCache(cmd *cobra.Command, f *cacheFlags, insecure []string, opts *builder.Options) (*buildCache, error) {
	from, to, err := f.specs()
	if err != nil {
		return nil, err
	}
	errOut := cmd.ErrOrStderr()
	bc := &buildCache{
		to:    to,
		warn:  func(s string) { fmt.Fprintln(errOut, "warning: "+s) },
		topts: []transfer.Opt{transfer.WithInsecure(insecure...)},
	}
	warnInContext(to, opts, bc.warn)
	if len(from) > 0 {
		bc.src = remotecache.Import(cmd.Context(), from, bc.warn, bc.topts...)
		opts.CacheFrom = bc.src
	}
	return bc, nil
}

// importInputs brings the imported records' input manifests into the
// root, so that --explain can compare against them on a fresh machine.
func (bc *buildCache) importInputs(cmd *cobra.Command, r *system.Root) {
	if bc.src == nil {
		return
	}
	if m, err := cache.OpenManifests(r.ExplainDir()); err == nil {
		bc.src.ImportInputs(cmd.Context(), m)
	}
}

// export writes the build's cache to each --cache-to.
func (bc *buildCache) export(cmd *cobra.Command, r *system.Root, res *builder.Result, out io.Writer) error {
	if len(bc.to) == 0 {
		return nil
	}
	st := r.Store
	b := remotecache.Build{Records: res.Records, Mounts: res.CacheMounts}
	if m, err := cache.OpenManifests(r.ExplainDir()); err == nil {
		b.Manifests = m // the steps' inputs travel with them, for --explain
	}
	for _, spec := range bc.to {
		stats, err := remotecache.Export(cmd.Context(), st, bc.src, b, spec, bc.warn, bc.topts...)
		if err != nil {
			return fmt.Errorf("--cache-to %s: %w", spec, err)
		}
		fmt.Fprintf(out, "exported cache to %s: %d steps, %d cache mounts, %s, %d new blobs\n",
			spec, stats.Entries, stats.Mounts, size(stats.Size), stats.Uploaded)
	}
	return nil
}

// warnInContext warns about a --cache-to dir inside the build context that
// .dockerignore does not leave out (as GitLab CI's cache paths must be):
// COPY . would see it change on every build and never hit the cache.
func warnInContext(to []remotecache.Spec, opts *builder.Options, warn func(string)) {
	ctx, err := filepath.Abs(opts.ContextDir)
	if err != nil {
		return
	}
	for _, s := range to {
		if s.Type != "local" {
			continue
		}
		dir, err := filepath.Abs(s.Dir)
		if err != nil {
			continue
		}
		rel, err := filepath.Rel(ctx, dir)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		df := opts.Dockerfile
		if df == "" {
			df = filepath.Join(opts.ContextDir, "Dockerfile")
		}
		ig, err := parser.LoadIgnore(ctx, df)
		if err != nil {
			continue
		}
		if ex, err := ig.Excluded(rel); err == nil && !ex {
			warn(fmt.Sprintf("--cache-to %s is inside the build context: add %s to .dockerignore, or COPY of the context misses the cache every build", s.Dir, filepath.ToSlash(rel)))
		}
	}
}
