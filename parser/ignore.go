package parser

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// Ignore decides which context paths the build may see, from .dockerignore.
type Ignore struct {
	File     string // the ignore file used, "" if none
	Patterns []string
	pm       *patternmatcher.PatternMatcher
}

// LoadIgnore reads the ignore file for a build of dockerfile in contextDir:
// <Dockerfile>.dockerignore beside the Dockerfile if present, else
// <context>/.dockerignore. No file means nothing is ignored.
func LoadIgnore(contextDir, dockerfile string) (*Ignore, error) {
	p := ignoreFile(contextDir, dockerfile)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return &Ignore{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	defer f.Close()
	pats, err := ignorefile.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	pm, err := patternmatcher.New(pats)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (fix the pattern)", p, err)
	}
	return &Ignore{File: p, Patterns: pats, pm: pm}, nil
}

// NewIgnore makes an Ignore from patterns in .dockerignore syntax (as
// COPY --exclude takes them); no patterns means nothing is excluded.
func NewIgnore(patterns []string) (*Ignore, error) {
	if len(patterns) == 0 {
		return &Ignore{}, nil
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf("bad pattern in %q: %w", patterns, err)
	}
	return &Ignore{Patterns: patterns, pm: pm}, nil
}

// Excluded reports whether the context-relative path rel (slash or OS
// separated) is excluded. parentExcluded is the answer for rel's parent dir, as
// patternmatcher's MatchesOrParentMatches needs for "!" exceptions.
func (ig *Ignore) Excluded(rel string) (bool, error) {
	if ig == nil || ig.pm == nil {
		return false, nil
	}
	return ig.pm.MatchesOrParentMatches(filepath.ToSlash(rel))
}

// HasExclusions reports whether some pattern re-includes paths ("!x"), in
// which case a directory that is excluded may still have included children.
func (ig *Ignore) HasExclusions() bool { return ig != nil && ig.pm != nil && ig.pm.Exclusions() }
