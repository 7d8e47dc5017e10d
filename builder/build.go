package builder

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/builder/executor"
	"github.com/lbuild/lbuild/builder/progress"
	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/parser"
	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/system"
	"github.com/lbuild/lbuild/transfer"
)

// DefaultPath is the PATH an image gets when its base sets none, as docker does.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Options describe one build.
type Options struct {
	Dockerfile string            // path of the Dockerfile; default ContextDir/Dockerfile
	ContextDir string            // the build context
	Tags       []string          // names to tag the result with
	BuildArgs  map[string]string // --build-arg values
	Target     string            // stage to build; "" = the last
	NoCache    bool              // skip cache lookups (results are still recorded)
	Network    string            // default network for RUN: "" or "default" (own namespace, outbound only), "host" or "none"
	Secrets    map[string]string // RUN --mount=type=secret sources: id -> host file
	Runtime    string            // OCI runtime for RUN; "" = runc from PATH
	// Executor, when not nil, runs the RUN steps instead of the OCI
	// runtime (the seam for a fake in tests, or a wrapper that records or
	// limits runs).
	Executor executor.Executor
	Progress progress.Writer // nil = discard
	// Platform is the platform a FROM pulls for ("" = linux/GOARCH; a
	// FROM --platform wins). Insecure lists registries spoken to over plain
	// http (localhost and 127.0.0.1 always are).
	Platform string
	Insecure []string
	// SourceDateEpoch is the build time (ParseSourceDateEpoch): seconds
	// since 1970 as a decimal string, or "now" for the wall clock. ""
	// takes BuildArgs["SOURCE_DATE_EPOCH"] if set, else HEAD's commit time
	// when the context is inside a git work tree, else 0 (1970-01-01). A
	// Dockerfile that declares ARG SOURCE_DATE_EPOCH gets a fixed time as
	// its value. A fixed time is the config's and every new
	// history entry's created, and the latest mtime in the layers the
	// build writes, so the same Dockerfile and context give the same image
	// anywhere. With "now", steps carry the time they were first built and
	// layers keep the times their files have.
	SourceDateEpoch string
	// Now returns the wall-clock time (with SourceDateEpoch "now"); nil = time.Now.
	Now func() time.Time
	// Explain tells, for each step that misses the cache, why (in the
	// progress, if it is a progress.Explainer, and in StepResult.Explain).
	Explain bool
	// CacheFrom, when not nil, is asked for the steps the root's cache
	// misses (--cache-from).
	CacheFrom CacheSource
	// Parallel is how many stages may build at the same time (0: the
	// number of CPUs; 1: one after another). The image is the same either
	// way.
	Parallel int
	// NoPipeline makes each layer step store its layer before the next step
	// starts, instead of in the background while it runs, and write a
	// COPY's files to disk before its layer, not to memory (the image is
	// the same either way; for comparison).
	NoPipeline bool
}

// Result is what a build made.
type Result struct {
	Image *store.Image
	Steps []StepResult
	// Records are the records of every step the build ran or reused, in
	// build order (what --cache-to exports); CacheMounts maps the id of each
	// RUN cache mount the build used to its directory.
	Records     []*cache.Record
	CacheMounts map[string]string

	finished time.Time // when Build ended (CheckReproducible spaces its second build from it)
}

// StepResult tells what happened to one step.
type StepResult struct {
	ID      int // the step's number in the progress (#ID)
	Stage   string
	Text    string    // the instruction as shown
	Key     cache.Key // its cache key
	Cached  bool
	DiffID  string // "" for a metadata step
	ChainID string // top snapshot after the step ("" = empty filesystem)
	// Explain says why the step missed the cache (Options.Explain; nil for
	// a cached step).
	Explain *Explanation
}

// Build runs the build described by opts against root.
//
// The build holds a lease on the root throughout, so a prune waits for it
// and never removes a blob or snapshot it uses; at its end every record it
// made or hit is marked used (for least-recently-used pruning).
//
// A layer of --cache-from that turns out unusable when it is fetched (a
// blob gone or corrupt since the cache was read) is a miss, not a failure:
// the build warns and runs again without it (the steps already done are
// cached by then), at most a few times.
func Build(ctx context.Context, r *system.Root, opts Options) (*Result, error) {
	if opts.CacheFrom != nil {
		if _, ok := opts.CacheFrom.(*guardedSource); !ok {
			opts.CacheFrom = &guardedSource{CacheSource: opts.CacheFrom, bad: map[v1.Hash]bool{}}
		}
	}
	for attempt := 1; ; attempt++ {
		res, err := buildOnce(ctx, r, opts)
		if err == nil || !errors.Is(err, errCacheLayer) || attempt == maxCacheRetries {
			return res, err
		}
		logrus.Warnf("%v: building again without it", err)
	}
}

// maxCacheRetries bounds the builds Build runs when --cache-from layers
// fail one after another.
const maxCacheRetries = 4

func buildOnce(ctx context.Context, r *system.Root, opts Options) (*Result, error) {
	release, err := r.Lease()
	if err != nil {
		return nil, err
	}
	defer release()
	b, err := newBuild(ctx, r, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		b.mu.Lock()
		keys := make([]cache.Key, len(b.steps), len(b.steps)+len(b.memoKeys))
		for i, s := range b.steps {
			keys[i] = s.Key
		}
		keys = append(keys, b.memoKeys...)
		b.mu.Unlock()
		r.Records.Touch(keys, time.Now())
	}()
	target, err := b.df.Target(opts.Target)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	wait := b.prefetch(ctx, cancel, target, b.parallelism())
	st, err := b.stage(ctx, target)
	cancel(err) // a failure stops the stages still building
	wait()
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(err, context.Canceled) && cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause // another stage failed first
		}
		return nil, err
	}
	img, err := b.writeImage(st)
	if err != nil {
		return nil, err
	}
	for _, t := range opts.Tags {
		if err := r.Store.Tag(t, img); err != nil {
			return nil, fmt.Errorf("tag %s: %w", t, err)
		}
	}
	if len(opts.Tags) > 0 {
		if img, err = r.Store.Image(img.Manifest.Digest); err != nil {
			return nil, err
		}
	}
	if err := b.files.Save(); err != nil {
		logrus.Warnf("save file-hash index: %v", err)
	}
	b.warnUnusedArgs()
	b.saveLast()
	// In step order (stages built at once finish in any order).
	sort.SliceStable(b.steps, func(i, j int) bool { return b.steps[i].ID < b.steps[j].ID })
	return &Result{Image: img, Steps: b.steps, Records: b.records, CacheMounts: b.mounts, finished: time.Now()}, nil
}

// build is the state of one Build call.
type build struct {
	root     *system.Root
	opts     Options
	df       *parser.Dockerfile
	lex      lexer // expands Dockerfile words; safe for concurrent use
	ignore   *parser.Ignore
	ctxDir   string
	files    *cache.FileIndex
	prog     progress.Writer
	metaArgs []kv // global ARGs with values after --build-arg
	xp       explainState
	time     buildTime

	// mu guards what stages building at once share (see parallel.go):
	// the fields below it and the notes in xp.
	mu             sync.Mutex
	flights        map[int]*flight // stages started, by index
	flightsChanged chan struct{}   // closed (and replaced) when a stage starts
	waiting        map[int]int     // stage -> the stage it waits for
	usedArgs       map[string]bool
	stepNo         int
	steps          []StepResult
	records        []*cache.Record // see Result.Records
	memoKeys       []cache.Key     // records of COPY --from checksums used (fromsum.go)

	exec executorFactory

	mountsMu sync.Mutex        // guards mounts
	mounts   map[string]string // see Result.CacheMounts
}

type kv struct{ k, v string }

func newBuild(ctx context.Context, r *system.Root, opts Options) (*build, error) {
	if opts.ContextDir == "" {
		opts.ContextDir = "."
	}
	ctxDir, err := filepath.Abs(opts.ContextDir)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(ctxDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("build context %s is not a directory: pass the context directory as the last argument", opts.ContextDir)
	}
	if opts.Dockerfile == "" {
		opts.Dockerfile = filepath.Join(opts.ContextDir, "Dockerfile")
	}
	df, err := parser.ParseFile(opts.Dockerfile)
	if err != nil {
		return nil, err
	}
	for _, w := range df.Warnings {
		logrus.Warn(w.String())
	}
	ig, err := parser.LoadIgnore(ctxDir, opts.Dockerfile)
	if err != nil {
		return nil, err
	}
	files, err := cache.OpenFileIndex(r.FileIndexPath())
	if err != nil {
		return nil, err
	}
	if opts.Progress == nil {
		opts.Progress = progress.NewPlain(discard{})
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Network, err = executor.ParseNetwork(opts.Network); err != nil {
		return nil, fmt.Errorf("--network: %w", err)
	}
	bt, err := resolveBuildTime(ctx, opts.epochSpec(), ctxDir, opts.Now)
	if err != nil {
		return nil, err
	}
	logrus.Debugf("build time %s (from %s)", bt.t.Format(time.RFC3339), bt.from)
	b := &build{
		time: bt, root: r, opts: opts, df: df, lex: lexer{df}, ignore: ig, ctxDir: ctxDir, files: files,
		prog: opts.Progress, usedArgs: map[string]bool{},
		flights: map[int]*flight{}, flightsChanged: make(chan struct{}), waiting: map[int]int{},
	}
	b.openExplain()
	// BuildKit's automatic platform ARGs: in scope for FROM lines, and in a
	// stage once declared (ARG TARGETARCH).
	target := opts.Platform
	if target == "" {
		target = "linux/" + runtime.GOARCH
	}
	for _, p := range []struct{ prefix, platform string }{{"BUILD", "linux/" + runtime.GOARCH}, {"TARGET", target}} {
		parts := strings.SplitN(p.platform, "/", 3)
		parts = append(parts, "", "")
		b.metaArgs = append(b.metaArgs, kv{p.prefix + "PLATFORM", p.platform}, kv{p.prefix + "OS", parts[0]},
			kv{p.prefix + "ARCH", parts[1]}, kv{p.prefix + "VARIANT", parts[2]})
	}
	// As in BuildKit, a Dockerfile that declares ARG SOURCE_DATE_EPOCH gets
	// the build time, for tools a RUN calls that honour it.
	if _, ok := opts.BuildArgs["SOURCE_DATE_EPOCH"]; ok {
		b.usedArgs["SOURCE_DATE_EPOCH"] = true
	} else if bt.fixed {
		b.metaArgs = append(b.metaArgs, kv{"SOURCE_DATE_EPOCH", strconv.FormatInt(bt.t.Unix(), 10)})
	}
	// Global ARGs: defaults expanded against the ones before, overridden by --build-arg.
	for _, a := range df.MetaArgs {
		for _, arg := range a.Args {
			b.usedArgs[arg.Key] = true
			if v, ok := opts.BuildArgs[arg.Key]; ok {
				b.metaArgs = setKV(b.metaArgs, arg.Key, v)
			} else if arg.Value != nil {
				v, _, err := b.lex.ProcessWord(*arg.Value, shell.EnvsFromSlice(kvSlice(b.metaArgs)))
				if err != nil {
					return nil, df.At(&a, err)
				}
				b.metaArgs = setKV(b.metaArgs, arg.Key, v)
			}
		}
	}
	return b, nil
}

// epochSpec is the build time as the options give it: SourceDateEpoch, or
// docker buildx's spelling --build-arg SOURCE_DATE_EPOCH=N.
func (o Options) epochSpec() string {
	if o.SourceDateEpoch == "" {
		return o.BuildArgs["SOURCE_DATE_EPOCH"]
	}
	return o.SourceDateEpoch
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func (b *build) warnUnusedArgs() {
	var unused []string
	for k := range b.opts.BuildArgs {
		if !b.usedArgs[k] && !slices.Contains(proxyNames, strings.ToUpper(k)) {
			unused = append(unused, k)
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		logrus.Warnf("one or more build-args %v were not consumed", unused)
	}
}

// stageState is a stage being built: the image so far and where its
// filesystem stands.
type stageState struct {
	st      *parser.Stage
	name    string // shown in progress: the stage name, "stage-N", or "" for a single-stage file
	cfg     *v1.ConfigFile
	layers  []v1.Descriptor // one per cfg.RootFS.DiffIDs
	chainID string          // snapshot chain ID of the top stored layer ("" = empty)
	// pending are the layer steps run whose layers are still being stored,
	// oldest first (layer.go); layers and chainID do not hold them yet.
	pending []*layerJob
	key     cache.Key // cache key of the last step
	args    []kv      // ARGs in scope with a value
	// argOver names the ARGs declared after the last ENV of the same name:
	// as in BuildKit (an ARG with a value sets the build state's env), they
	// win over that ENV in expansions and RUN, not in the image config.
	argOver map[string]bool
	cmdSet  bool     // CMD set in this stage (ENTRYPOINT keeps it)
	total   int      // steps in the stage, for [name i/n]
	index   int      // steps done so far
	stepID  int      // progress ID of the step being dispatched
	note    stepNote // the step being dispatched, for explanations
	line    int      // its line in the Dockerfile (an ONBUILD trigger's: its FROM's)
	// fromLine, while the triggers of its base run, is the FROM's line.
	fromLine int
}

// expandEnv is the environment variables in a Dockerfile word see: the ARGs
// in scope and the ENVs, the later declaration of a name winning (BuildKit:
// ENV and an ARG with a value both set the build state's env).
func (s *stageState) expandEnv() shell.EnvGetter {
	return shell.EnvsFromSlice(s.runEnv())
}

// runEnv is the environment a RUN step gets: the image's ENV, with the ARGs
// in scope that ENV does not set or that were declared after it.
func (s *stageState) runEnv() []string {
	env := append([]string(nil), s.cfg.Config.Env...)
	for _, a := range s.args {
		if _, ok := imagecfg.LookupEnv(env, a.k); !ok {
			env = append(env, a.k+"="+a.v)
		} else if s.argOver[a.k] {
			env = imagecfg.SetEnv(env, a.k, a.v)
		}
	}
	return env
}

func setKV(l []kv, k, v string) []kv {
	for i := range l {
		if l[i].k == k {
			l[i].v = v
			return l
		}
	}
	return append(l, kv{k, v})
}

func kvSlice(l []kv) []string {
	out := make([]string, len(l))
	for i, a := range l {
		out[i] = a.k + "=" + a.v
	}
	return out
}

// from sets up a stage's state from its FROM line: scratch, an earlier stage,
// or an image in the store. ONBUILD triggers of the base run right after.
func (b *build) from(ctx context.Context, s *parser.Stage) (*stageState, error) {
	name := s.Name
	if len(b.df.Stages) > 1 && name == "" {
		name = fmt.Sprintf("stage-%d", s.Index)
	} else if len(b.df.Stages) == 1 {
		name = ""
	}
	base, _, err := b.lex.ProcessWord(s.BaseName, shell.EnvsFromSlice(kvSlice(b.metaArgs)))
	if err != nil {
		return nil, &parser.Error{File: b.df.Path, Line: s.Line(), Err: err}
	}
	if base == "" {
		return nil, &parser.Error{File: b.df.Path, Line: s.Line(), Err: fmt.Errorf("FROM %s expands to an empty base name: pass it with --build-arg", s.BaseName)}
	}
	// A stage this one stands on is built first, so its steps show before this FROM.
	var parent *stageState
	if dep, ok := b.df.Stage(base); ok && dep.Index < s.Index && !strings.EqualFold(base, "scratch") {
		if parent, err = b.stage(ctx, dep); err != nil {
			return nil, err
		}
	}
	st := &stageState{st: s, name: name, total: len(s.Commands) + 1, index: 1}
	fromID := b.nextStep()
	st.stepID = fromID
	b.prog.Start(fromID, st.label("FROM "+base))
	var triggers []string
	var fromImage string
	text := "FROM " + base
	switch {
	case strings.EqualFold(base, "scratch"):
		st.cfg = &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, RootFS: v1.RootFS{Type: "layers"}}
		st.key = cache.NewKey("", "FROM scratch", st.cfg.OS+"/"+st.cfg.Architecture)
	default:
		if parent != nil {
			st.cfg = imagecfg.Clone(parent.cfg)
			st.layers = append([]v1.Descriptor(nil), parent.layers...)
			st.chainID, st.key = parent.chainID, parent.key
			st.args = append([]kv(nil), parent.args...) // ARGs in scope carry over, as in BuildKit
			st.argOver = maps.Clone(parent.argOver)
		} else {
			img, err := b.baseImage(ctx, base, s, fromID)
			if err != nil {
				return nil, &parser.Error{File: b.df.Path, Line: s.Line(), Err: err}
			}
			st.cfg = imagecfg.Clone(img.Config)
			st.layers = append([]v1.Descriptor(nil), img.Layers...)
			st.chainID = system.ChainID(st.cfg.RootFS.DiffIDs)
			st.key = cache.NewKey("", "FROM", img.ID.String())
			fromImage = img.ID.String()
		}
		triggers = st.cfg.Config.OnBuild
		st.cfg.Config.OnBuild = nil
	}
	if st.cfg.OS == "" {
		st.cfg.OS = "linux"
	}
	if st.cfg.Architecture == "" {
		st.cfg.Architecture = runtime.GOARCH
	}
	if _, ok := imagecfg.LookupEnv(st.cfg.Config.Env, "PATH"); !ok {
		st.cfg.Config.Env = append(st.cfg.Config.Env, "PATH="+DefaultPath)
	}
	st.index = 1
	b.prog.Done(fromID, nil)
	b.noteFrom(st.key, fromID, fromImage)
	b.addStep(StepResult{ID: fromID, Stage: name, Text: text, Key: st.key, Cached: true, ChainID: st.chainID})

	st.fromLine = s.Line()
	for _, t := range triggers {
		c, err := parser.ParseTrigger(t)
		if err != nil {
			b.abandon(st)
			return nil, &parser.Error{File: b.df.Path, Line: s.Line(), Err: fmt.Errorf("ONBUILD trigger %q of %s: %w", t, base, err)}
		}
		st.total++
		if err := b.dispatch(ctx, st, c); err != nil {
			b.abandon(st)
			if pe := (*parser.Error)(nil); errors.As(err, &pe) {
				// An earlier trigger's layer, placed already.
				return nil, err
			}
			return nil, &parser.Error{File: b.df.Path, Line: s.Line(), Err: fmt.Errorf("ONBUILD trigger %q: %w", t, err)}
		}
	}
	st.fromLine = 0
	return st, nil
}

// label is a step's progress line: one line, so a heredoc shows its first
// line and an ellipsis.
func (s *stageState) label(text string) string {
	if i := strings.IndexByte(text, '\n'); i >= 0 {
		text = text[:i] + " …"
	}
	if s.name == "" {
		return fmt.Sprintf("[%d/%d] %s", s.index, s.total, text)
	}
	return fmt.Sprintf("[%s %d/%d] %s", s.name, s.index, s.total, text)
}

// baseImage finds a FROM's image in the store, or pulls it from its registry
// once (the next build finds it in the store).
func (b *build) baseImage(ctx context.Context, ref string, s *parser.Stage, stepID int) (*store.Image, error) {
	img, err := b.root.Store.Resolve(ref)
	if err == nil || !errors.Is(err, store.ErrNotFound) {
		return img, err
	}
	platform := b.opts.Platform
	if s.Platform != "" {
		p, _, err := b.lex.ProcessWord(s.Platform, shell.EnvsFromSlice(kvSlice(b.metaArgs)))
		if err != nil {
			return nil, err
		}
		platform = p
	}
	out := &lineWriter{emit: func(line string) { b.prog.Log(stepID, line) }}
	opts := []transfer.Opt{transfer.WithProgress(out), transfer.WithInsecure(b.opts.Insecure...)}
	if platform != "" {
		opts = append(opts, transfer.WithPlatform(platform))
	}
	img, err = transfer.Pull(ctx, b.root.Store, ref, opts...)
	out.flush()
	if err != nil {
		return nil, fmt.Errorf("base image %q is not in the local store and pulling it failed: %w", ref, err)
	}
	return img, nil
}

// writeImage stores the final state of a stage as an image.
func (b *build) writeImage(st *stageState) (*store.Image, error) {
	if err := b.needLayers(context.Background(), st.layers); err != nil {
		return nil, err
	}
	cfg := imagecfg.Clone(st.cfg)
	switch n := len(cfg.History); {
	case b.time.fixed:
		cfg.Created = v1.Time{Time: b.time.t}
	case n > 0:
		cfg.Created = cfg.History[n-1].Created
	}
	return b.root.Store.WriteImage(cfg, st.layers)
}
