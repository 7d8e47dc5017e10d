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
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
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

// Parse parses a Dockerfile's bytes; path is only used in error messages.
func Parse(path string, data []byte) (*Dockerfile, error) {
	res, err := bkparser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, locate(path, err)
	}
	if res.AST == nil || len(res.AST.Children) == 0 {
		return nil, &Error{File: path, Err: errors.New("file with no instructions")}
	}
	stages, metaArgs, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, locate(path, err)
	}
	if len(stages) == 0 {
		return nil, &Error{File: path, Err: errors.New("no FROM instruction: a Dockerfile must start with FROM")}
	}
	df := &Dockerfile{Path: path, MetaArgs: metaArgs, Escape: res.EscapeToken}
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
// into a command, as BuildKit does when a later FROM uses the image.
func ParseTrigger(expr string) (instructions.Command, error) {
	res, err := bkparser.Parse(strings.NewReader(expr))
	if err != nil {
		return nil, err
	}
	if len(res.AST.Children) != 1 {
		return nil, errors.New("onbuild trigger should be a single expression")
	}
	return instructions.ParseCommand(res.AST.Children[0])
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
