package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lbuild/lbuild/internal/fsx"
	"golang.org/x/sys/unix"
)

// danglingLinkAge is how old a link in l/ whose layer does not exist must be
// before Cleanup removes it (a commit in flight makes its link first).
const danglingLinkAge = 10 * time.Minute

func (s *snapshotter) Cleanup(ctx context.Context) error {
	// Exclusive: nobody is between creating a directory and locking it.
	g, err := lockFile(filepath.Join(s.root, "lock"), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	defer g.Close()

	var (
		errs []error
		live []string // directories of live snapshots and temp dirs
		dead []deadDir
	)
	defer func() {
		for _, d := range dead {
			if d.lock != nil {
				d.lock.Close()
			}
		}
	}()

	entries, err := os.ReadDir(filepath.Join(s.root, "active"))
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	for _, e := range entries {
		dir := filepath.Join(s.root, "active", e.Name())
		var meta activeMeta
		if b, err := os.ReadFile(filepath.Join(dir, "meta.json")); err == nil && json.Unmarshal(b, &meta) == nil && meta.Persistent {
			live = append(live, dir)
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, keepFile)); err == nil {
			live = append(live, dir) // a kept container's, its metadata damaged
			continue
		}
		l, err := lockFile(filepath.Join(dir, "lock"), unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile: nothing left to clean up
		}
		if err != nil {
			if !errors.Is(err, errLocked) {
				errs = append(errs, err)
			}
			live = append(live, dir)
			continue
		}
		dead = append(dead, deadDir{dir, l})
	}

	tmp := filepath.Join(s.root, "tmp")
	entries, err = os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	for _, e := range entries {
		if !isTempLock(e.Name()) {
			if !names[e.Name()+".lock"] {
				dead = append(dead, deadDir{filepath.Join(tmp, e.Name()), nil})
			}
			continue
		}
		p := filepath.Join(tmp, strings.TrimSuffix(e.Name(), ".lock"))
		l, err := fsx.LockExisting(p+".lock", unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			if !errors.Is(err, errLocked) {
				errs = append(errs, err)
			}
			live = append(live, p)
			continue
		}
		dead = append(dead, deadDir{p, l})
	}

	// Overlay mounts under the root that belong to no live snapshot.
	mounts, err := readMountInfo()
	if err != nil {
		errs = append(errs, err)
	}
	var stale []string
	deadList := deadPaths(dead)
	for _, m := range mounts {
		if !strings.HasPrefix(m.target, s.root+"/") || under(m.target, live) {
			continue
		}
		if m.fstype == "overlay" || under(m.target, deadList) {
			stale = append(stale, m.target)
		}
	}
	sort.Slice(stale, func(i, j int) bool { return len(stale[i]) > len(stale[j]) })
	for _, t := range stale {
		if err := unix.Unmount(t, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", t, err))
		}
	}

	for _, d := range dead {
		if err := ctx.Err(); err != nil {
			return err
		}
		unmount(filepath.Join(d.path, "merged")) // mounted in another namespace view: best effort
		p := d.path
		if !strings.HasPrefix(p, tmp+"/") {
			// Renamed away first (this holds the root lock exclusively):
			// a Remove or lookup of the same key never finds it half
			// deleted under its name. What a failed delete leaves in
			// tmp/ is unlocked: the next Cleanup takes it.
			t := filepath.Join(tmp, "rm-"+randomID(16))
			if err := os.Rename(p, t); err != nil {
				errs = append(errs, fmt.Errorf("cleanup: %w", err))
				continue
			}
			p = t
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: %w", err))
			continue
		}
		if d.lock != nil && strings.HasPrefix(d.path, tmp+"/") {
			os.Remove(d.path + ".lock")
		}
	}

	links, err := os.ReadDir(filepath.Join(s.root, "l"))
	if err != nil {
		errs = append(errs, fmt.Errorf("cleanup: %w", err))
	}
	for _, e := range links {
		p := filepath.Join(s.root, "l", e.Name())
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if fi, err := os.Lstat(p); err == nil && time.Since(fi.ModTime()) > danglingLinkAge {
			os.Remove(p)
		}
	}
	return errors.Join(errs...)
}

// deadDir is a directory Cleanup removes, with the lock it took (nil if none).
type deadDir struct {
	path string
	lock *os.File
}

func deadPaths(ds []deadDir) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.path
	}
	return out
}

// under reports whether p is one of dirs or below one.
func under(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}
