package builder

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"

	"github.com/lbuild/lbuild/parser"
)

// Stages run in parallel: before the target is built, every stage it needs
// (through FROM <stage>, COPY --from and RUN --mount from=, where the name
// needs no ARG) starts in its own goroutine once the stages it needs are
// built, at most Options.Parallel at a time. Each stage is built once
// (stage is single-flight): the target, or a stage needing one that has not
// started, builds it itself or waits for the goroutine building it. The
// first failure cancels the build's context, so the other stages stop at
// their next step (a RUN is killed), and Build returns that failure.
//
// What stages share is guarded by build.mu: step numbers, the step list,
// the records, the ARGs used and the notes for --explain. Everything else
// a stage touches is its own (stageState) or safe for concurrent use (the
// store, the snapshotter, the file index, the progress writer). With
// Explain, stages run one at a time: explanations read other steps' notes.

// flight is one stage's build, shared by everyone who needs the stage.
type flight struct {
	done chan struct{} // closed when st and err are set
	st   *stageState
	err  error
}

// stageCaller is the context key of the stage whose build asks for
// another stage (FROM or --from), for the cycle check.
type stageCaller struct{}

// parallelism is how many stages may build at once: Options.Parallel,
// 0 meaning the number of CPUs; 1 with Explain.
func (b *build) parallelism() int {
	switch {
	case b.opts.Explain:
		return 1
	case b.opts.Parallel > 0:
		return b.opts.Parallel
	}
	return runtime.NumCPU()
}

// stage builds stage s (once per build, whoever asks first) and returns its
// final state. A stage that (through others) needs itself is an error.
func (b *build) stage(ctx context.Context, s *parser.Stage) (*stageState, error) {
	caller, hasCaller := ctx.Value(stageCaller{}).(int)
	b.mu.Lock()
	if hasCaller {
		// Follow what s waits for (or builds inline): reaching the caller
		// is a cycle, which would otherwise wait forever.
		seen := map[int]bool{}
		for at, ok := s.Index, true; ok && !seen[at]; at, ok = b.waiting[at] {
			if at == caller {
				b.mu.Unlock()
				return nil, &parser.Error{File: b.df.Path, Line: s.Line(), Err: fmt.Errorf("stage %q depends on itself", s.Name)}
			}
			seen[at] = true
		}
		b.waiting[caller] = s.Index
		defer func() {
			b.mu.Lock()
			delete(b.waiting, caller)
			b.mu.Unlock()
		}()
	}
	f, running := b.flights[s.Index]
	if !running {
		f = &flight{done: make(chan struct{})}
		b.flights[s.Index] = f
		close(b.flightsChanged)
		b.flightsChanged = make(chan struct{})
	}
	b.mu.Unlock()
	if !running {
		f.st, f.err = b.buildStage(context.WithValue(ctx, stageCaller{}, s.Index), s)
		close(f.done)
		return f.st, f.err
	}
	select {
	case <-f.done:
		return f.st, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// buildStage builds stage s: its FROM, then its instructions.
func (b *build) buildStage(ctx context.Context, s *parser.Stage) (*stageState, error) {
	st, err := b.from(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, c := range s.Commands {
		if err := ctx.Err(); err != nil {
			b.abandon(st)
			return nil, err
		}
		if err := b.dispatch(ctx, st, c); err != nil {
			b.abandon(st)
			return nil, b.df.At(c, err)
		}
	}
	// Others read a stage's layers only once they are all stored.
	if err := b.drain(ctx, st, true); err != nil {
		return nil, err
	}
	return st, nil
}

// stageDeps returns the stages s needs built first, as far as the
// Dockerfile says without running it: its FROM stage and the stages its
// COPY --from and RUN --mount from= name (names with variables are left to
// the build itself).
func (b *build) stageDeps(s *parser.Stage) []*parser.Stage {
	var deps []*parser.Stage
	add := func(name string, earlierOnly bool) {
		if name == "" || strings.ContainsAny(name, "$") || strings.EqualFold(name, "scratch") {
			return
		}
		if d, ok := b.df.Stage(name); ok && d != s && (!earlierOnly || d.Index < s.Index) {
			deps = append(deps, d)
		}
	}
	if base, _, err := b.lex.ProcessWord(s.BaseName, shell.EnvsFromSlice(kvSlice(b.metaArgs))); err == nil {
		add(base, true)
	}
	for _, c := range s.Commands {
		switch c := c.(type) {
		case *instructions.CopyCommand:
			add(c.From, false)
		case *instructions.RunCommand:
			for _, m := range instructions.GetMounts(c) {
				add(m.From, false)
			}
		}
	}
	return deps
}

// prefetch starts building, in the background, the stages target needs
// (not target itself), each once the stages it needs are built, at most
// n at a time. A failure cancels ctx with the error as its cause. wait
// returns once every goroutine it started has ended.
func (b *build) prefetch(ctx context.Context, cancel context.CancelCauseFunc, target *parser.Stage, n int) (wait func()) {
	deps := map[int][]*parser.Stage{}
	var need []*parser.Stage
	var visit func(s *parser.Stage)
	visit = func(s *parser.Stage) {
		if _, ok := deps[s.Index]; ok {
			return
		}
		deps[s.Index] = b.stageDeps(s)
		for _, d := range deps[s.Index] {
			visit(d)
		}
		if s != target {
			need = append(need, s)
		}
	}
	visit(target)
	if len(need) < 2 || n < 2 || hasCycle(deps) {
		// Nothing to overlap (one stage before the target builds as
		// fast inline), or a cycle the build reports as it meets it.
		return func() {}
	}
	sort.Slice(need, func(i, j int) bool { return need[i].Index < need[j].Index })
	var wg sync.WaitGroup
	slots := make(chan struct{}, n)
	for _, s := range need {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, d := range deps[s.Index] {
				if !b.awaitStage(ctx, d) {
					return // it failed: the build is cancelled
				}
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-slots }()
			if _, err := b.stage(ctx, s); err != nil && !errors.Is(err, context.Canceled) {
				cancel(err)
			}
		}()
	}
	return wg.Wait
}

// awaitStage waits until stage s has been built (by whoever builds it),
// without starting it, and reports whether it succeeded.
func (b *build) awaitStage(ctx context.Context, s *parser.Stage) bool {
	for {
		b.mu.Lock()
		f, changed := b.flights[s.Index], b.flightsChanged
		b.mu.Unlock()
		if f != nil {
			select {
			case <-f.done:
				return f.err == nil
			case <-ctx.Done():
				return false
			}
		}
		select {
		case <-changed: // a stage started: perhaps s
		case <-ctx.Done():
			return false
		}
	}
}

// hasCycle reports whether the stage graph deps has a cycle.
func hasCycle(deps map[int][]*parser.Stage) bool {
	const (
		visiting = 1
		done     = 2
	)
	state := map[int]int{}
	var walk func(i int) bool
	walk = func(i int) bool {
		switch state[i] {
		case visiting:
			return true
		case done:
			return false
		}
		state[i] = visiting
		for _, d := range deps[i] {
			if walk(d.Index) {
				return true
			}
		}
		state[i] = done
		return false
	}
	for i := range deps {
		if walk(i) {
			return true
		}
	}
	return false
}

// nextStep numbers a new step.
func (b *build) nextStep() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stepNo++
	return b.stepNo
}

// addStep records what happened to a step (Result.Steps) and returns its
// index there.
func (b *build) addStep(res StepResult) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.steps = append(b.steps, res)
	return len(b.steps) - 1
}

// setStepLayer fills in the layer of step i once it is stored.
func (b *build) setStepLayer(i int, diffID, chainID string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.steps[i].DiffID, b.steps[i].ChainID = diffID, chainID
}

// useArg notes that build arg k was declared (warnUnusedArgs).
func (b *build) useArg(k string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.usedArgs[k] = true
}

// lexer expands Dockerfile words with the Dockerfile's escape token. A
// BuildKit shell.Lex reuses one buffer across calls, so stages building at
// once must not share one: each call gets its own.
type lexer struct{ df *parser.Dockerfile }

// ProcessWord is shell.Lex.ProcessWord on a lexer of its own.
func (l lexer) ProcessWord(word string, env shell.EnvGetter) (string, map[string]struct{}, error) {
	return l.df.Lex().ProcessWord(word, env)
}

// ProcessWordWithMatches is shell.Lex.ProcessWordWithMatches on a lexer of
// its own.
func (l lexer) ProcessWordWithMatches(word string, env shell.EnvGetter) (shell.ProcessWordResult, error) {
	return l.df.Lex().ProcessWordWithMatches(word, env)
}
