// Package rootpath resolves paths inside a directory that stands for a
// filesystem root (an image's rootfs, a build context), following symbolic
// links as the kernel would inside a chroot: ".." and absolute link targets
// never leave the root. It is the one path resolver of lbuild; writing
// tar entries uses os.Root (snapshot), and reading a tree a container may be
// changing uses descriptors only (snapshot's nofollow walker).
//
// Contract: the returned path is root-relative, slash separated, clean and
// free of symbolic links in every component that exists ("" is the root
// itself); joined to root it names a path inside root. Resolution is by
// path: a tree changed concurrently by someone else may race it (use it on
// trees lbuild owns while it resolves).
package rootpath

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

// MaxSymlinks bounds the symlinks followed while resolving one path, as the
// kernel's ELOOP limit does.
const MaxSymlinks = 40

// Options tune Resolve.
type Options struct {
	// Visit, when not nil, is called with every path resolution reaches
	// (root-relative, lexically or through a link), before it is looked
	// at; last says it is the final component. An error stops resolution
	// and is returned as is (the builder uses it to make what
	// .dockerignore excludes unreachable).
	Visit func(rel string, last bool) error
	// Missing: a component that does not exist ends resolution, and the
	// rest is appended lexically (cleaned, confined), as securejoin does;
	// otherwise it is an error matching fs.ErrNotExist.
	Missing bool
}

// Resolve resolves rel (absolute or relative to the root) inside root.
//
// Errors: a missing path (without Options.Missing) matches fs.ErrNotExist;
// a component that is not a directory matches syscall.ENOTDIR (without
// Options.Missing); too many links matches syscall.ELOOP; errors name the
// root-relative path, never the host path.
func Resolve(root, rel string, o Options) (string, error) {
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
		if o.Visit != nil {
			if err := o.Visit(next, last); err != nil {
				return "", err
			}
		}
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(next)))
		if o.Missing && errors.Is(err, fs.ErrNotExist) {
			tail := path.Clean("/" + strings.Join(append([]string{part}, rest...), "/"))
			return strings.TrimPrefix(path.Join(cur, tail), "/"), nil
		}
		if err != nil {
			return "", RelError(next, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !last && !fi.IsDir() && !o.Missing {
				return "", &fs.PathError{Op: "resolve", Path: next, Err: syscall.ENOTDIR}
			}
			cur = next
			continue
		}
		if links++; links > MaxSymlinks {
			return "", &fs.PathError{Op: "resolve", Path: rel, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(filepath.Join(root, filepath.FromSlash(next)))
		if err != nil {
			return "", RelError(next, err)
		}
		if path.IsAbs(filepath.ToSlash(target)) {
			cur = ""
		}
		rest = append(strings.Split(filepath.ToSlash(target), "/"), rest...)
	}
	return cur, nil
}

// Join is Resolve with Options.Missing, joined to root: the host path of
// the image path p, as securejoin.SecureJoin gives it.
func Join(root, p string) (string, error) {
	rel, err := Resolve(root, p, Options{Missing: true})
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", p, err)
	}
	return filepath.Join(root, filepath.FromSlash(rel)), nil
}

// RelError names the root-relative path rel in err instead of the host path.
func RelError(rel string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return &fs.PathError{Op: "resolve", Path: rel, Err: pe.Err}
	}
	return err
}

// allDots reports whether the remaining components only name the current
// path ("x/." ends at x); ".." does not: "x/.." needs x to be a directory.
func allDots(parts []string) bool {
	for _, p := range parts {
		if p != "" && p != "." {
			return false
		}
	}
	return true
}
