package builder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// maxSymlinks bounds the symlinks followed while resolving one path, as
// the kernel's ELOOP limit does.
const maxSymlinks = 40

// hiddenError is returned by resolveInRoot when the path it reaches is one
// .dockerignore excludes: for the build that path does not exist.
type hiddenError struct {
	rel string // root-relative path the source resolved to
}

func (e *hiddenError) Error() string {
	return fmt.Sprintf("the path leads to %s, which .dockerignore excludes", e.rel)
}

// Unwrap makes a hidden path read as a missing one (errors.Is(err,
// fs.ErrNotExist)).
func (e *hiddenError) Unwrap() error { return fs.ErrNotExist }

// resolveInRoot resolves the root-relative path rel inside root, following
// symlinks as securejoin.SecureJoin does ("..", absolute links and links
// pointing outside stay inside root), and returns the resolved path,
// root-relative, slash separated, without symlinks ("" is root itself).
//
// It sees root as a BuildKit build would see a context filtered by ig: every
// path it reaches, lexically or through a symlink, is matched against ig
// (relative to root) as it is reached, and an excluded one does not exist.
// So no symlink leads to what ig hides. An excluded directory on the way is
// passed through only when ig has "!" exceptions (a file they keep inside it
// is sent with its parents); the path at the end must be kept by ig itself,
// unless it is such a directory (a walk below it sees only what ig keeps).
// ig may be nil.
//
// Errors: a missing path, or one ig excludes (a *hiddenError), matches
// fs.ErrNotExist; a component that is not a directory matches
// syscall.ENOTDIR; too many links matches syscall.ELOOP.
func resolveInRoot(root, rel string, ig ignorer) (string, error) {
	rest := strings.Split(filepath.ToSlash(rel), "/")
	cur := ""
	links := 0
	for len(rest) > 0 {
		part := rest[0]
		rest = rest[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if cur = path.Dir(cur); cur == "." {
				cur = ""
			}
			continue
		}
		next := path.Join(cur, part)
		last := len(rest) == 0 || allDots(rest)
		ex, err := excluded(ig, next)
		if err != nil {
			return "", err
		}
		if ex && !ig.HasExclusions() {
			return "", &hiddenError{rel: next}
		}
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(next)))
		if ex && (err != nil || !fi.IsDir()) && last {
			// An excluded directory at the end is still reached when "!"
			// exceptions may keep something inside it (its walk sees only
			// what they keep); anything else excluded does not exist.
			return "", &hiddenError{rel: next}
		}
		if err != nil {
			return "", relError(next, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !last && !fi.IsDir() {
				return "", &fs.PathError{Op: "resolve", Path: next, Err: syscall.ENOTDIR}
			}
			cur = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", &fs.PathError{Op: "resolve", Path: rel, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(filepath.Join(root, filepath.FromSlash(next)))
		if err != nil {
			return "", relError(next, err)
		}
		if path.IsAbs(filepath.ToSlash(target)) {
			cur = ""
		}
		rest = append(strings.Split(filepath.ToSlash(target), "/"), rest...)
	}
	return cur, nil
}

// relError names the root-relative path in err instead of the host path,
// which may be a store directory the user has no business with.
func relError(rel string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return &fs.PathError{Op: "resolve", Path: rel, Err: pe.Err}
	}
	return err
}

// allDots reports whether the remaining components only name the current
// path ("x/." ends at x) — ".." does not: "x/.." needs x to be a directory.
func allDots(parts []string) bool {
	for _, p := range parts {
		if p != "" && p != "." {
			return false
		}
	}
	return true
}

// isHidden reports whether err says the path was hidden by .dockerignore.
func isHidden(err error) bool {
	var h *hiddenError
	return errors.As(err, &h)
}
