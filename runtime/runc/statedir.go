package runc

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/internal/fsx"
)

// The runtime's state (runc --root) and the bundles change with every run:
// a dozen small files made and removed per RUN step (config.json, the /etc
// files, the stub record, the logs, the run lock, runc's state.json and
// exec fifo). On a disk file system each costs an inode allocation and a
// journal entry, which under I/O load takes milliseconds; so, as docker
// keeps runc's state under /run, the two dirs live in memory when they can:
// stateDir/runc and stateDir/bundles are symbolic links to
// <mem>/<hash of stateDir>/{runc,bundles}, where <mem> is memStateBases' first
// usable entry. The links keep every path under stateDir valid (Cleanup,
// "runc --root stateDir/runc list"), and the target is found again after a
// reboot empties the tmpfs (it is recreated, empty, as nothing of a run
// survives a reboot anyway).

// memStateBases are the candidate parents of in-memory state, best first.
// Each must be a tmpfs; the lbuild dir made in it must be a real directory
// owned by this user with mode 0700 (so no other user can plant anything in
// it: /dev/shm is world-writable), else it is not used.
var memStateBases = []string{"/run/lbuild", "/dev/shm/lbuild"}

// stateDirNames are the entries of a state dir kept in memory.
var stateDirNames = []string{"runc", "bundles"}

// ensureStateDirs makes stateDir/runc and stateDir/bundles (stateDir
// absolute): symbolic links into memory where possible, else plain
// directories. Existing entries are kept: a plain directory (a store made
// before, or without a tmpfs) stays one, a link is followed, its target
// recreated if a reboot removed it.
func ensureStateDirs(stateDir string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	var mem string      // <base>/<hash>, made on first need
	var making *os.File // the base's orphansLock, shared, once mem is known
	defer func() {
		if making != nil {
			making.Close()
		}
	}()
	for _, name := range stateDirNames {
		p := filepath.Join(stateDir, name)
		fi, err := os.Lstat(p)
		switch {
		case err == nil && fi.IsDir():
			continue
		case err == nil && fi.Mode()&fs.ModeSymlink != 0:
			// Followed only into a safe base: after a reboot another user
			// could have made the target first.
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("state dir: %w", err)
			}
			if base := filepath.Dir(filepath.Dir(target)); slices.Contains(memStateBases, base) {
				if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
					return fmt.Errorf("creating state dir: %w", err)
				}
				if safeBase(base) {
					// Made again if a reboot emptied the tmpfs.
					if err := os.MkdirAll(target, 0o700); err != nil {
						return fmt.Errorf("creating state dir: %w", err)
					}
					continue
				}
			}
			// Not a tmpfs of ours (any more): a plain directory instead.
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("state dir: %w", err)
			}
			if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating state dir: %w", err)
			}
			continue
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("state dir: %w", err)
		case err == nil:
			return fmt.Errorf("state dir %s is not a directory", p)
		}
		if mem == "" {
			mem = memStateDir(stateDir)
			if mem != "" {
				// Until its links exist, a new target looks like an
				// orphan: removeOrphans waits.
				making, err = fsx.Lock(filepath.Join(filepath.Dir(mem), orphansLock), unix.LOCK_SH)
				if err != nil {
					return fmt.Errorf("creating state dir: %w", err)
				}
			}
		}
		if mem == "" {
			if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating state dir: %w", err)
			}
			continue
		}
		target := filepath.Join(mem, name)
		if err := os.MkdirAll(target, 0o700); err != nil {
			return fmt.Errorf("creating state dir: %w", err)
		}
		if err := os.WriteFile(filepath.Join(mem, sourceFile), []byte(stateDir), 0o600); err != nil {
			return fmt.Errorf("creating state dir: %w", err)
		}
		// Another process may make the entry at the same time: whatever
		// it made first is used by both.
		if err := os.Symlink(target, p); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating state dir: %w", err)
		}
	}
	return nil
}

// memStateDir returns the in-memory directory for stateDir's state,
// <base>/<hash>, making the base if needed; "" if no base is usable.
func memStateDir(stateDir string) string {
	real, err := filepath.EvalSymlinks(stateDir)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256([]byte(real))
	for _, base := range memStateBases {
		if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			continue
		}
		if safeBase(base) {
			mem := filepath.Join(base, hex.EncodeToString(sum[:8]))
			if _, err := os.Stat(mem); errors.Is(err, fs.ErrNotExist) {
				removeOrphans(base)
			}
			return mem
		}
	}
	return ""
}

// safeBase reports whether base is a tmpfs directory (not a link) owned by
// this user with mode 0700.
func safeBase(base string) bool {
	var st unix.Stat_t
	if err := unix.Lstat(base, &st); err != nil {
		return false
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o7777 != 0o700 || int(st.Uid) != os.Geteuid() {
		return false
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(base, &sfs); err != nil {
		return false
	}
	return sfs.Type == unix.TMPFS_MAGIC
}

// sourceFile, in an in-memory state dir, names the state dir it serves.
const sourceFile = "source"

// orphansLock, in a base, is held shared while a state dir's targets and
// links are made and exclusively while removeOrphans looks for state dirs
// no link names: a target made but not linked yet is no orphan.
const orphansLock = ".lock"

// removeOrphans removes the in-memory state dirs in base whose state dir
// is gone or links elsewhere now (stores deleted, as tests' temporary ones
// are), if they are empty: a run's leftovers stay for its store's Cleanup.
func removeOrphans(base string) {
	f, err := fsx.Lock(filepath.Join(base, orphansLock), unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		return // state dirs being made (or removed by another): next time
	}
	defer f.Close()
	ents, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		mem := filepath.Join(base, e.Name())
		src, err := os.ReadFile(filepath.Join(mem, sourceFile))
		if err != nil {
			continue
		}
		if linkedFrom(string(src), mem) {
			continue // still in use
		}
		empty := true
		for _, name := range stateDirNames {
			if err := os.Remove(filepath.Join(mem, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				empty = false
			}
		}
		if empty {
			os.Remove(filepath.Join(mem, sourceFile))
			os.Remove(mem)
		}
	}
}

// linkedFrom reports whether any entry of state dir src links into mem.
func linkedFrom(src, mem string) bool {
	for _, name := range stateDirNames {
		if t, err := os.Readlink(filepath.Join(src, name)); err == nil && t == filepath.Join(mem, name) {
			return true
		}
	}
	return false
}
