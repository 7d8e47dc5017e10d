// Package parser turns a Dockerfile into a build plan: BuildKit's parser gives
// the AST and its instructions package the typed commands; this package adds
// what lbuild needs around them (stage lookup, --target, errors that name the
// file and line, ONBUILD triggers, .dockerignore). It never re-parses
// Dockerfile syntax itself.
//
// Variable expansion depends on the build state at each step (the image's ENV
// and the ARGs in scope), so it happens in the builder, through Expand.
package parser

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	bkparser "github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Error is a problem found in a Dockerfile. It prints as "FILE:LINE: message",
// the single line a user sees.
type Error struct {
	File string // path of the Dockerfile as given
	Line int    // 1-based; 0 when unknown
	Err  error
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Dockerfile is a parsed Dockerfile: its stages in order and the ARGs declared
// before the first FROM.
type Dockerfile struct {
	Path     string // as given, for messages
	Stages   []*Stage
	MetaArgs []instructions.ArgCommand
	Escape   rune // the escape token ('\\' unless a directive says '`')
	// Warnings are what BuildKit's lint rules found, as docker build reports
	// them; they do not stop the build (unless "# check=error=true", then
	// Parse fails instead).
	Warnings []Warning
}

// Warning is one lint rule's finding (e.g. FromAsCasing), as BuildKit
// reports it. It prints as "FILE:LINE: Rule: message (see URL)".
type Warning struct {
	File    string // path of the Dockerfile as given
	Line    int    // 1-based; 0 when unknown
	Rule    string // BuildKit's rule name, e.g. "FromAsCasing"
	Message string // one line
	URL     string // the rule's documentation
}

func (w Warning) String() string {
	loc := w.File
	if w.Line > 0 {
		loc = fmt.Sprintf("%s:%d", w.File, w.Line)
	}
	if w.URL != "" {
		return fmt.Sprintf("%s: %s: %s (see %s)", loc, w.Rule, w.Message, w.URL)
	}
	return fmt.Sprintf("%s: %s: %s", loc, w.Rule, w.Message)
}

// Stage is one FROM section.
type Stage struct {
	instructions.Stage
	Index int // position among the Dockerfile's stages
}

// Line returns the first line of the stage's FROM instruction.
func (s *Stage) Line() int { return firstLine(s.Location) }

// ParseFile reads and parses the Dockerfile at path.
func ParseFile(path string) (*Dockerfile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &Error{File: path, Err: errors.New("no such Dockerfile: pass its path with -f")}
		}
		return nil, &Error{File: path, Err: err}
	}
	return Parse(path, data)
}

// errPanic marks a panic inside BuildKit turned into an error; the fuzz
// tests fail on it, as it hides a bug.
var errPanic = errors.New("BuildKit's Dockerfile parser failed")

// Parse parses a Dockerfile's bytes; path is only used in messages.
//
// BuildKit's lint rules that live in its parser and instructions packages
// run as in docker build; their findings are returned in
// Dockerfile.Warnings. "# check=" directives (at the top of the file, or as
// a comment before an instruction) configure them as in docker build; with
// "# check=error=true" a finding fails the parse. A panic inside BuildKit is
// returned as an *Error, never propagated.
func Parse(path string, data []byte) (df *Dockerfile, err error) {
	defer func() {
		if r := recover(); r != nil {
			df, err = nil, &Error{File: path, Err: fmt.Errorf("%w (%v): please report this Dockerfile as an lbuild bug", errPanic, r)}
		}
	}()
	checks, _, checkLoc, _ := bkparser.ParseDirective("check", data)
	cfg, err := linter.ParseLintOptions(checks)
	if err != nil {
		return nil, &Error{File: path, Line: firstLine(checkLoc), Err: fmt.Errorf("bad # check= directive: %w", err)}
	}
	var warnings []Warning
	cfg.Warn = func(rule, _, url, msg string, loc []bkparser.Range) {
		warnings = append(warnings, Warning{File: path, Line: firstLine(loc), Rule: rule, Message: oneLine(msg), URL: url})
	}
	lint := linter.New(cfg)

	res, err := bkparser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, locate(path, err)
	}
	if res.AST == nil || len(res.AST.Children) == 0 {
		return nil, &Error{File: path, Err: errors.New("file with no instructions")}
	}
	// As dockerfile2llb does: the parser's own warnings are empty
	// continuation lines, reported through the linter.
	for _, w := range res.Warnings {
		if w.URL == linter.RuleNoEmptyContinuation.URL && w.Location != nil {
			lint.Run(&linter.RuleNoEmptyContinuation, []bkparser.Range{*w.Location}, linter.RuleNoEmptyContinuation.Format())
		}
	}
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return nil, locate(path, err)
	}
	if len(stages) == 0 {
		return nil, &Error{File: path, Err: errors.New("no FROM instruction: a Dockerfile must start with FROM")}
	}
	sort.SliceStable(warnings, func(i, j int) bool { return warnings[i].Line < warnings[j].Line })
	if lint.Error() != nil && len(warnings) > 0 {
		var rules []string
		for _, w := range warnings {
			if !slices.Contains(rules, w.Rule) {
				rules = append(rules, w.Rule)
			}
		}
		return nil, &Error{File: path, Line: warnings[0].Line, Err: fmt.Errorf("lint violation found for rules: %s (the Dockerfile sets # check=error=true): fix them or skip the rules with # check=skip=RULE",
			strings.Join(rules, ", "))}
	}
	df = &Dockerfile{Path: path, MetaArgs: metaArgs, Escape: res.EscapeToken, Warnings: warnings}
	seen := map[string]int{}
	for i := range stages {
		st := &Stage{Stage: stages[i], Index: i}
		st.Name = strings.ToLower(st.Name)
		if st.Name != "" {
			if prev, dup := seen[st.Name]; dup {
				return nil, &Error{File: path, Line: st.Line(),
					Err: fmt.Errorf("duplicate stage name %q (first defined at line %d): rename one of them", st.Name, df.Stages[prev].Line())}
			}
			seen[st.Name] = i
		}
		df.Stages = append(df.Stages, st)
	}
	return df, nil
}

// Lex returns a shell lexer using the Dockerfile's escape token.
func (d *Dockerfile) Lex() *shell.Lex { return shell.NewLex(d.Escape) }

// Stage finds a stage by name (case-insensitive) or by index ("0", "1", …).
func (d *Dockerfile) Stage(name string) (*Stage, bool) {
	name = strings.ToLower(name)
	for _, s := range d.Stages {
		if s.Name != "" && s.Name == name {
			return s, true
		}
	}
	var n int
	if _, err := fmt.Sscanf(name, "%d", &n); err == nil && fmt.Sprint(n) == name && n >= 0 && n < len(d.Stages) {
		return d.Stages[n], true
	}
	return nil, false
}

// Target returns the stage to build: the one named by target, or the last.
func (d *Dockerfile) Target(target string) (*Stage, error) {
	if target == "" {
		return d.Stages[len(d.Stages)-1], nil
	}
	s, ok := d.Stage(target)
	if !ok {
		var names []string
		for _, s := range d.Stages {
			if s.Name != "" {
				names = append(names, s.Name)
			}
		}
		return nil, &Error{File: d.Path, Err: fmt.Errorf("target stage %q not found (stages: %s)", target, strings.Join(names, ", "))}
	}
	return s, nil
}

// ParseTrigger parses one ONBUILD trigger expression (e.g. "COPY . /app")
// into a command, as BuildKit does when a later FROM uses the image. Lint
// rules do not run on triggers. A panic inside BuildKit is returned as an
// error.
func ParseTrigger(expr string) (cmd instructions.Command, err error) {
	defer func() {
		if r := recover(); r != nil {
			cmd, err = nil, fmt.Errorf("%w on ONBUILD trigger %q (%v): please report it as an lbuild bug", errPanic, expr, r)
		}
	}()
	res, err := bkparser.Parse(strings.NewReader(expr))
	if err != nil {
		return nil, err
	}
	if res.AST == nil || len(res.AST.Children) != 1 {
		return nil, errors.New("onbuild trigger should be a single expression")
	}
	// A linter without a Warn func reports nothing; BuildKit's nil linter
	// would panic on a "# check=" comment in the trigger.
	v, err := instructions.ParseInstructionWithLinter(res.AST.Children[0], linter.New(&linter.Config{}))
	if err != nil {
		return nil, err
	}
	c, ok := v.(instructions.Command)
	if !ok {
		return nil, fmt.Errorf("%T is not a command", v)
	}
	return c, nil
}

// Line returns the first line of a command, 0 if unknown.
func Line(c instructions.Command) int { return firstLine(c.Location()) }

// At wraps err with the file and the command's line.
func (d *Dockerfile) At(c instructions.Command, err error) error {
	var pe *Error
	if errors.As(err, &pe) {
		return err
	}
	return &Error{File: d.Path, Line: Line(c), Err: err}
}

func firstLine(r []bkparser.Range) int {
	if len(r) == 0 {
		return 0
	}
	return r[0].Start.Line
}

// oneLine keeps the first line of s.
func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// locate turns a BuildKit parse error into an *Error with the line it names.
func locate(path string, err error) error {
	line := 0
	var le *bkparser.LocationError
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		line = le.Locations[0][0].Start.Line
	}
	msg := err.Error()
	// BuildKit prefixes some messages with the line itself; keep one line.
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if i := strings.Index(msg, ": "); i >= 0 && strings.HasPrefix(msg, "dockerfile parse error on line ") {
		msg = msg[i+2:]
	}
	if strings.Contains(msg, "no build stage in current context") {
		msg = "instruction before the first FROM: a Dockerfile must start with FROM (only ARG may precede it)"
	}
	var uie *instructions.UnknownInstructionError
	if errors.As(err, &uie) {
		msg = fmt.Sprintf("unknown instruction: %s (check the spelling)", strings.ToUpper(uie.Instruction))
		if line == 0 {
			line = uie.Line
		}
	}
	return &Error{File: path, Line: line, Err: errors.New(msg)}
}

// ignoreFile returns the .dockerignore that applies: <Dockerfile>.dockerignore
// beside the Dockerfile takes precedence over <context>/.dockerignore.
func ignoreFile(contextDir, dockerfile string) string {
	if dockerfile != "" {
		p := dockerfile + ".dockerignore"
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join(contextDir, ".dockerignore")
}
