package runc

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/internal/fsx"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// owner identifies a process across pid reuse: its pid and its start time
// (field 22 of /proc/<pid>/stat, in clock ticks since boot).
type owner struct {
	pid   int
	start uint64
}

const idPrefix = "lbuild-"

// containerID returns the ID of this owner's n-th run:
// lbuild-<pid>-<starttime>-<n>.
func (o owner) containerID(n uint64) string {
	return fmt.Sprintf("%s%d-%d-%d", idPrefix, o.pid, o.start, n)
}

// parseContainerID returns the owner embedded in an ID made by
// containerID, and false for IDs lbuild did not make.
func parseContainerID(id string) (owner, bool) {
	rest, ok := strings.CutPrefix(id, idPrefix)
	if !ok {
		return owner{}, false
	}
	f := strings.Split(rest, "-")
	if len(f) != 3 {
		return owner{}, false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	_, err3 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || pid <= 0 {
		return owner{}, false
	}
	return owner{pid: pid, start: start}, true
}

// self returns the owner for this process.
var self = sync.OnceValues(func() (owner, error) {
	pid := os.Getpid()
	start, err := startTime(pid)
	if err != nil {
		return owner{}, err
	}
	return owner{pid: pid, start: start}, nil
})

// startTime reads the start time of pid from /proc/<pid>/stat.
func startTime(pid int) (uint64, error) {
	start, _, err := procStat(pid)
	return start, err
}

// procStat reads the start time and the state (R, S, Z, ...) of pid from
// /proc/<pid>/stat.
func procStat(pid int) (uint64, byte, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may contain
	// spaces and parentheses: parse after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("parsing /proc/%d/stat: too few fields", pid)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	return start, f[0][0], err
}

// alive reports whether the owner process still runs (same pid, same start
// time, not a zombie nobody has reaped yet).
func (o owner) alive() bool {
	start, state, err := procStat(o.pid)
	return err == nil && start == o.start && state != 'Z' && state != 'X'
}

// lockRun takes the exclusive lock of run id (bundles/<id>.lock) and returns
// the function that removes and releases it.
func (r *Runc) lockRun(id string) (func(), error) {
	p := filepath.Join(r.bundles, id+".lock")
	f, err := fsx.Lock(p, unix.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("lock run: %w", err)
	}
	return func() {
		os.Remove(p)
		f.Close()
	}, nil
}

// runAlive reports whether the run id of owner o is still in progress: its
// lock is held (by any process, in any PID namespace). Runs without a lock
// file are judged by their owner's pid.
func (r *Runc) runAlive(id string, o owner) bool {
	p := filepath.Join(r.bundles, id+".lock")
	if _, err := os.Stat(p); err != nil {
		return o.alive()
	}
	return fsx.Held(p) // held: the run goes on
}

// Cleanup kills and deletes the runtime containers, and removes the
// bundles (unmounting their network namespaces), left in the state dir by
// lbuild processes that died (their IDs embed the owner's pid and start
// time, so a reused pid is not mistaken for the owner). Where a dead run's rootfs still exists, the mount stubs that
// run recorded are removed from it as Run would have. Runs of live
// processes, this one included, are left alone, so Cleanup may run at any
// time. IDs not made by lbuild are ignored.
func (r *Runc) Cleanup(ctx context.Context) error {
	var errs []error
	// The runtime keeps one state dir per container under --root: read
	// them directly rather than through "runc list", which fails outright
	// when a container another process is deleting vanishes mid-listing.
	states, err := os.ReadDir(r.root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("list runtime state: %w", err)
	}
	for _, st := range states {
		id := st.Name()
		o, ok := parseContainerID(id)
		if !ok || r.runAlive(id, o) {
			continue
		}
		_, _ = r.runtimeCmd(ctx, "kill", "--all", id, "KILL")
		if err := r.delete(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	ents, err := os.ReadDir(r.bundles)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return errors.Join(append(errs, err)...)
	}
	for _, e := range ents {
		name := strings.TrimSuffix(e.Name(), ".lock")
		o, ok := parseContainerID(name)
		if !ok || r.runAlive(name, o) {
			continue
		}
		if name != e.Name() {
			os.Remove(filepath.Join(r.bundles, e.Name())) // a dead run's lock file
			continue
		}
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		bundle := filepath.Join(r.bundles, e.Name())
		if b, err := os.ReadFile(filepath.Join(bundle, stubsFile)); err == nil {
			var s stubSet
			if json.Unmarshal(b, &s) == nil && s.Rootfs != "" {
				if _, err := os.Stat(s.Rootfs); err == nil {
					if err := s.remove(); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		// The dead run's slirp4netns exited with it (its exit pipe
		// closed); its network namespace is still mounted.
		if err := unmountNetns(bundle); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(bundle); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
