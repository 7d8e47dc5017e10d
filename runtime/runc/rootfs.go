package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lbuild/lbuild/internal/rootpath"
)

// resolveInRoot returns the rootfs-relative path of the container path p
// (absolute or relative to "/"), resolving symbolic links in the existing
// components as the runtime does, confined to rootfs (rootpath, the one
// path resolver lbuild uses). Components that do
// not exist are appended as given (cleaned). "" is the root itself.
func resolveInRoot(rootfs, p string) (string, error) {
	abs, err := rootpath.Join(rootfs, p)
	if err != nil {
		return "", fmt.Errorf("resolve %s in rootfs: %w", p, err)
	}
	rel, err := filepath.Rel(rootfs, abs)
	if err != nil {
		return "", err
	}
	if rel == "." {
		return "", nil
	}
	return rel, nil
}

// cleanRel turns the output of path.Join/Clean into the rootfs-relative
// form used here ("" for the root, no leading slash).
func cleanRel(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

// mkdirAllOwned creates the container directory dir (and its missing
// parents) in rootfs with mode 0755, owned by uid:gid, following symbolic
// links confined to rootfs.
func mkdirAllOwned(rootfs, dir string, uid, gid uint32) error {
	rel, err := resolveInRoot(rootfs, dir)
	if err != nil {
		return err
	}
	if rel == "" {
		return nil
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		// Re-resolve each prefix: an earlier component may have been
		// created just now, so only the new ones are plain names.
		host := filepath.Join(rootfs, filepath.Join(parts[:i+1]...))
		fi, err := os.Lstat(host)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("working directory %s: %s is not a directory", dir, "/"+strings.Join(parts[:i+1], "/"))
			}
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.Mkdir(host, 0o755); err != nil {
			return err
		}
		// Mkdir applies the umask; set the mode explicitly.
		if err := os.Chmod(host, 0o755); err != nil {
			return err
		}
		if err := os.Lchown(host, int(uid), int(gid)); err != nil {
			return err
		}
	}
	return nil
}

// stubSet records which potential mount-point stubs (and their parents)
// were missing from a rootfs before a run. Paths are rootfs-relative.
type stubSet struct {
	Rootfs  string   `json:"rootfs"`
	Missing []string `json:"missing"` // deepest first
	// Parents are the existing directories the stubs were created in, as they
	// were before the run: creating and removing a stub changes a parent's
	// mtime, which would put the parent into the step's layer.
	Parents map[string]parentState `json:"parents,omitempty"`
}

// parentState is a directory's mtime and entry names before a run.
type parentState struct {
	Mtime int64    `json:"mtime"` // unix ns
	Atime int64    `json:"atime"`
	Names []string `json:"names"`
}

func dirState(host string) (parentState, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(host, &st); err != nil {
		return parentState{}, err
	}
	ents, err := os.ReadDir(host)
	if err != nil {
		return parentState{}, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return parentState{Mtime: st.Mtim.Nano(), Atime: st.Atim.Nano(), Names: names}, nil
}

// recordStubs returns the stub candidates for dests that are missing from
// rootfs now.
func recordStubs(rootfs string, dests []string) (*stubSet, error) {
	seen := map[string]bool{}
	s := &stubSet{Rootfs: rootfs, Parents: map[string]parentState{}}
	for _, d := range dests {
		rel, err := resolveInRoot(rootfs, d)
		if err != nil {
			// Unresolvable (e.g. a symlink loop): the runtime will fail
			// on it too; nothing to track.
			continue
		}
		p := rel
		for ; p != "" && p != "."; p = cleanRel(path.Dir(p)) {
			if seen[p] {
				break
			}
			seen[p] = true
			if _, err := os.Lstat(filepath.Join(rootfs, p)); errors.Is(err, fs.ErrNotExist) {
				s.Missing = append(s.Missing, p)
			} else if err != nil {
				return nil, err
			} else {
				if p != rel {
					if _, ok := s.Parents[p]; !ok {
						if ps, err := dirState(filepath.Join(rootfs, p)); err == nil {
							s.Parents[p] = ps
						}
					}
				}
				break // p exists, so do its parents
			}
		}
	}
	slices.SortFunc(s.Missing, func(a, b string) int {
		if da, db := strings.Count(a, "/"), strings.Count(b, "/"); da != db {
			return db - da
		}
		return strings.Compare(a, b)
	})
	return s, nil
}

// remove deletes the recorded paths that exist now and are empty
// directories or empty regular files, deepest first. A path is only touched
// if none of its parents inside the rootfs is a symbolic link, so nothing
// outside the rootfs can be reached.
func (s *stubSet) remove() error {
	var errs []error
	for _, p := range s.Missing {
		if !plainPath(s.Rootfs, p) {
			continue
		}
		host := filepath.Join(s.Rootfs, p)
		fi, err := os.Lstat(host)
		if err != nil {
			continue
		}
		switch {
		case fi.IsDir():
			err := os.Remove(host)
			if err != nil && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
				errs = append(errs, err)
			}
		case fi.Mode().IsRegular() && fi.Size() == 0:
			if err := os.Remove(host); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	// Parents whose entries are as they were get their times back, so an
	// untouched /etc does not land in the layer.
	for p, before := range s.Parents {
		if !plainPath(s.Rootfs, p) {
			continue
		}
		host := filepath.Join(s.Rootfs, p)
		now, err := dirState(host)
		if err != nil || !slices.Equal(now.Names, before.Names) {
			continue
		}
		if now.Mtime != before.Mtime {
			os.Chtimes(host, time.Unix(0, before.Atime), time.Unix(0, before.Mtime))
		}
	}
	return errors.Join(errs...)
}

// plainPath reports whether every parent of the rootfs-relative p is a
// real directory (no symbolic links).
func plainPath(rootfs, p string) bool {
	parts := strings.Split(p, "/")
	for i := 1; i < len(parts); i++ {
		fi, err := os.Lstat(filepath.Join(rootfs, filepath.Join(parts[:i]...)))
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}
