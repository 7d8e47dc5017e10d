package builder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/lbuild/lbuild/internal/rootpath"
)

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
// symlinks with rootpath.Resolve ("..", absolute links and links
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
	return rootpath.Resolve(root, rel, rootpath.Options{Visit: func(next string, last bool) error {
		ex, err := excluded(ig, next)
		if err != nil {
			return err
		}
		if ex && !ig.HasExclusions() {
			return &hiddenError{rel: next}
		}
		if ex && last {
			// An excluded directory at the end is still reached when "!"
			// exceptions may keep something inside it (its walk sees only
			// what they keep); anything else excluded does not exist.
			if fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(next))); err != nil || !fi.IsDir() {
				return &hiddenError{rel: next}
			}
		}
		return nil
	}})
}

// isHidden reports whether err says the path was hidden by .dockerignore.
func isHidden(err error) bool {
	var h *hiddenError
	return errors.As(err, &h)
}
