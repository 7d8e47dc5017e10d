// Package fsx holds the small filesystem primitives every part of lbuild's
// store shares, each written once: atomic file writes (temp file, fsync,
// rename, fsync of the directory), directory fsync, and flock with EINTR
// retried.
//
// Contract: a file written by WriteFile holds either its old content or all
// of the new, never part of it, also after a crash (WriteFileVolatile: only
// while the machine runs); a lock from Lock lasts until the returned file is
// closed (closing the last descriptor releases it), across goroutines and
// processes alike.
package fsx

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// WriteFile writes b to path atomically with mode perm: a temp file in
// tmpDir ("" = path's own directory; it must be on the same filesystem) is
// written, synced and renamed to path, and path's directory is synced.
func WriteFile(path, tmpDir string, b []byte, perm os.FileMode) error {
	return writeFile(path, tmpDir, b, perm, true)
}

// WriteFileVolatile is WriteFile without the syncs: readers see the old
// content or all of the new, but a crash may leave path empty, partial or
// gone. For files that matter only while their process runs and that the
// next recovery removes when they are unreadable (~1 ms saved a write here).
func WriteFileVolatile(path, tmpDir string, b []byte, perm os.FileMode) error {
	return writeFile(path, tmpDir, b, perm, false)
}

func writeFile(path, tmpDir string, b []byte, perm os.FileMode, sync bool) error {
	dir := filepath.Dir(path)
	if tmpDir == "" {
		tmpDir = dir
	}
	f, err := os.CreateTemp(tmpDir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if !sync {
		return nil
	}
	return SyncDir(dir)
}

// WriteJSON writes v as indented JSON to path atomically (see WriteFile);
// without sync, as WriteFileVolatile.
func WriteJSON(path string, v any, perm os.FileMode, sync bool) error {
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return writeFile(path, "", b, perm, sync)
}

// SyncDir fsyncs a directory, making renames and creations in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	return nil
}

// ErrLocked is returned by Lock with unix.LOCK_NB when another open file
// description holds a conflicting lock.
var ErrLocked = errors.New("locked by another process")

// Lock opens (creating, mode 0600) path and flocks it with how (unix.LOCK_SH
// or unix.LOCK_EX, optionally |unix.LOCK_NB), retrying on EINTR. The lock
// lasts until the returned file is closed.
func Lock(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return lock(f, path, how)
}

// LockExisting is Lock on a file that must exist already: it is never
// created (the error wraps fs.ErrNotExist).
func LockExisting(path string, how int) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return lock(f, path, how)
}

// Held reports whether another open file description holds a lock on the
// existing file path; false if path does not exist.
func Held(path string) bool {
	f, err := LockExisting(path, unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		return errors.Is(err, ErrLocked)
	}
	f.Close()
	return false
}

func lock(f *os.File, path string, how int) (*os.File, error) {
	if err := Flock(f, how); err != nil {
		f.Close()
		if errors.Is(err, ErrLocked) {
			return nil, err
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// Flock flocks the open file f with how (see Lock), retrying on EINTR; it
// returns ErrLocked when unix.LOCK_NB was given and the lock is held. The
// lock lasts until f (and every descriptor sharing its open file
// description) is closed.
func Flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		switch {
		case err == unix.EINTR:
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return ErrLocked
		}
		return err
	}
}

// LockFunc is Lock with unix.LOCK_EX, returning the release function.
func LockFunc(path string) (func(), error) {
	f, err := Lock(path, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

// TreeSize sums the sizes of the regular files below root, not following
// symlinks and not crossing into other filesystems (a container's overlay
// mounted under the root is the layers below it again, not more bytes),
// a file with several names once (an indexed layer's tar is a hard link
// to its blob); 0 if root is missing; unreadable parts are skipped.
func TreeSize(root string) int64 {
	var n int64
	var dev uint64
	seen := map[uint64]bool{} // inodes with several links
	if fi, err := os.Lstat(root); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			dev = st.Dev
		}
	}
	filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			if fi, err := d.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Dev != dev {
					return fs.SkipDir
				}
			}
		}
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
					if seen[st.Ino] {
						return nil // another name of a file counted already
					}
					seen[st.Ino] = true
				}
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
