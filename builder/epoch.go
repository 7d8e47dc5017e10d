package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
)

// EpochNow is the SourceDateEpoch that restores wall-clock times.
const EpochNow = "now"

// buildTime is the one time a build writes: into the config's created,
// every history entry it adds, and as the latest mtime in its layers.
type buildTime struct {
	t time.Time
	// fixed is false for "now": steps keep the time they were built at and
	// layers are not clamped.
	fixed bool
	// from says where t came from, for the progress log.
	from string
}

// ParseSourceDateEpoch reads a build time as --source-date-epoch and the
// SOURCE_DATE_EPOCH variable give it: whole seconds since 1970-01-01 UTC
// (0 or more), or "now". It returns the time and whether it is fixed (not
// "now").
func ParseSourceDateEpoch(s string) (time.Time, bool, error) {
	s = strings.TrimSpace(s)
	if s == EpochNow {
		return time.Time{}, false, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > 253402300799 { // up to 9999-12-31, what tar and JSON times can carry
		return time.Time{}, false, fmt.Errorf("%q is not a build time: want whole seconds since 1970-01-01 UTC (e.g. $(git log -1 --format=%%ct)) or %q", s, EpochNow)
	}
	return time.Unix(n, 0).UTC(), true, nil
}

// resolveBuildTime picks the build time: spec if set (ParseSourceDateEpoch);
// else HEAD's commit time when ctxDir is inside a git work tree; else 0
// (1970-01-01, as ko and apko use).
func resolveBuildTime(ctx context.Context, spec, ctxDir string, now func() time.Time) (buildTime, error) {
	if spec != "" {
		t, fixed, err := ParseSourceDateEpoch(spec)
		if err != nil {
			return buildTime{}, fmt.Errorf("source date epoch: %w", err)
		}
		if !fixed {
			return buildTime{t: now().UTC(), from: "the clock"}, nil
		}
		return buildTime{t: t, fixed: true, from: "--source-date-epoch"}, nil
	}
	t, err := gitCommitTime(ctx, ctxDir)
	if err == nil {
		return buildTime{t: t, fixed: true, from: "the git commit time"}, nil
	}
	if errors.Is(err, errNoGit) || errors.Is(err, errNotInGit) {
		logrus.Debugf("build time: no git commit time for %s (%v): using 1970-01-01", ctxDir, err)
	} else {
		// A work tree whose commit time cannot be read (e.g. git's "dubious
		// ownership"): say so, the user expected the commit time.
		logrus.Warnf("build time: %v: using 1970-01-01 (set SOURCE_DATE_EPOCH or --source-date-epoch)", err)
	}
	return buildTime{t: time.Unix(0, 0).UTC(), fixed: true, from: "the default"}, nil
}

// errNoGit is returned by gitCommitTime when git is not installed,
// errNotInGit when the directory is in no git work tree or its branch has no
// commits yet.
var (
	errNoGit    = errors.New("git is not installed")
	errNotInGit = errors.New("not in a git work tree with commits")
)

// gitCommitTime returns the committer time of HEAD of the git work tree
// holding dir.
func gitCommitTime(ctx context.Context, dir string) (time.Time, error) {
	if !mayBeInGit(dir) {
		return time.Time{}, errNotInGit
	}
	gitPath, err := exec.LookPath("git")
	if err != nil {
		return time.Time{}, errNoGit
	}
	cmd := exec.CommandContext(ctx, gitPath, "-C", dir, "log", "-1", "--format=%ct")
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANGUAGE=") // messages in English, to tell "no work tree" from failures
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "not a git repository") || strings.Contains(msg, "does not have any commits") {
			return time.Time{}, errNotInGit
		}
		return time.Time{}, fmt.Errorf("git log in %s: %w: %s", dir, err, msg)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(out.String()), 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("git log: unexpected output %q", out.String())
	}
	return time.Unix(n, 0).UTC(), nil
}

// mayBeInGit reports whether git could find a repository for dir: GIT_DIR
// is set, or dir or one of its parents holds a .git entry or is itself a
// git directory (a bare repository). When it reports false, git would say
// "not a git repository", so the build need not start it (a few ms of
// every build of a context outside git). It looks further than git does
// (across filesystems, past GIT_CEILING_DIRECTORIES): it may say true
// where git then finds nothing, never the reverse.
func mayBeInGit(dir string) bool {
	if os.Getenv("GIT_DIR") != "" {
		return true
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return true
	}
	// git walks up from the directory it changed into (the path with
	// its symlinks resolved); the path as written is walked too.
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return true
	}
	return gitAbove(abs) || real != abs && gitAbove(real)
}

// gitAbove reports whether dir or a parent holds a .git entry or is a git
// directory.
func gitAbove(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(filepath.Join(d, ".git")); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return true
		}
		if isGitDir(d) {
			return true
		}
		if d == filepath.Dir(d) {
			return false
		}
	}
}

// isGitDir reports whether d looks like a git directory as git's discovery
// checks it: HEAD, objects/ and refs/.
func isGitDir(d string) bool {
	for _, n := range []string{"HEAD", "objects", "refs"} {
		if _, err := os.Lstat(filepath.Join(d, n)); err != nil {
			return false
		}
	}
	return true
}
