package runc

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// memBase points memStateBases at a fresh directory on /dev/shm with mode
// perm for the test, skipping it if /dev/shm is no tmpfs.
func memBase(t *testing.T, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "lbuild-test-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	base := filepath.Join(dir, "lbuild")
	if err := os.Mkdir(base, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, perm); err != nil {
		t.Fatal(err)
	}
	if perm == 0o700 && !safeBase(base) {
		t.Skip("/dev/shm is no tmpfs")
	}
	old := memStateBases
	memStateBases = []string{base}
	t.Cleanup(func() { memStateBases = old })
	return base
}

// The runtime state and the bundles live in a tmpfs behind links in the
// state dir; runs work through them, and a reboot emptying the tmpfs (the
// targets gone) is survived.
func TestStateDirInMemory(t *testing.T) {
	base := memBase(t, 0o700)
	if _, err := exec.LookPath("runc"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs runc and root")
	}
	rootfs := newRootfs(t)
	stateDir := t.TempDir()
	r, err := NewRunc("", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range stateDirNames {
		target, err := os.Readlink(filepath.Join(stateDir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if filepath.Dir(filepath.Dir(target)) != base {
			t.Errorf("%s links to %s, want a dir in %s", name, target, base)
		}
	}
	if out := mustRun(t, r, rootfs, Meta{Args: sh("echo ok"), Env: testEnv}); out != "ok\n" {
		t.Errorf("output %q", out)
	}
	if err := os.RemoveAll(base); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(base, 0o700); err != nil {
		t.Fatal(err)
	}
	r, err = NewRunc("", stateDir)
	if err != nil {
		t.Fatalf("after the tmpfs was emptied: %v", err)
	}
	if out := mustRun(t, r, rootfs, Meta{Args: sh("echo again"), Env: testEnv}); out != "again\n" {
		t.Errorf("output %q", out)
	}
	if err := r.Cleanup(context.Background()); err != nil {
		t.Error(err)
	}

	// After a reboot another user made the base, and the targets in it,
	// first: the links are not followed there; plain directories instead.
	targets := map[string]string{}
	for _, name := range stateDirNames {
		targets[name], _ = os.Readlink(filepath.Join(stateDir, name))
	}
	if err := os.RemoveAll(base); err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		if err := os.MkdirAll(target, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(base, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	r, err = NewRunc("", stateDir)
	if err != nil {
		t.Fatalf("with a base of another user: %v", err)
	}
	for _, name := range stateDirNames {
		if fi, err := os.Lstat(filepath.Join(stateDir, name)); err != nil || !fi.IsDir() {
			t.Errorf("%s with a base of another user: %v, %v; want a plain directory", name, fi.Mode(), err)
		}
	}
	if out := mustRun(t, r, rootfs, Meta{Args: sh("echo plain"), Env: testEnv}); out != "plain\n" {
		t.Errorf("output %q", out)
	}
	if ents, _ := os.ReadDir(targets["bundles"]); len(ents) != 0 {
		t.Errorf("a run used the other user's directory: %v", ents)
	}
}

// A base other users could write to, or one that is not this user's own
// 0700 directory, is not used: the state stays in plain directories.
func TestStateDirUnsafeBase(t *testing.T) {
	memBase(t, 0o755)
	stateDir := t.TempDir()
	if _, err := NewRunc("", stateDir); err != nil {
		if err == ErrRuntimeNotFound {
			t.Skip("runc not in PATH")
		}
		t.Fatal(err)
	}
	for _, name := range stateDirNames {
		fi, err := os.Lstat(filepath.Join(stateDir, name))
		if err != nil || !fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0 {
			t.Errorf("%s: %v, %v; want a plain directory", name, fi.Mode(), err)
		}
	}
}

// A state dir made before (plain directories) stays as it is.
func TestStateDirKeepsPlainDirs(t *testing.T) {
	memBase(t, 0o700)
	stateDir := t.TempDir()
	for _, name := range stateDirNames {
		if err := os.Mkdir(filepath.Join(stateDir, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewRunc("", stateDir); err != nil {
		if err == ErrRuntimeNotFound {
			t.Skip("runc not in PATH")
		}
		t.Fatal(err)
	}
	for _, name := range stateDirNames {
		if fi, err := os.Lstat(filepath.Join(stateDir, name)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v, %v; want the plain directory kept", name, fi.Mode(), err)
		}
	}
}

// Stores made at the same time as others are deleted: making a state dir
// removes the orphans of deleted ones, and must never remove the targets
// of one being made (its link not made yet), which left a run with no
// bundles directory ("lock run: ... no such file or directory").
func TestStateDirsMadeWhileOrphansRemoved(t *testing.T) {
	memBase(t, 0o700)
	parent := t.TempDir()
	const workers, rounds = 4, 150
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			errs <- func() error {
				for i := range rounds {
					stateDir := filepath.Join(parent, fmt.Sprintf("%d-%d", w, i))
					if err := ensureStateDirs(stateDir); err != nil {
						return err
					}
					for _, name := range stateDirNames {
						if fi, err := os.Stat(filepath.Join(stateDir, name)); err != nil || !fi.IsDir() {
							return fmt.Errorf("round %d: %s after ensureStateDirs: %v", i, name, err)
						}
					}
					// Deleted as a test's temporary store is: an orphan
					// for the next store made to remove.
					if err := os.RemoveAll(stateDir); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// A state dir whose runc entry is a plain directory but whose bundles
// entry links into memory still uses that memory: it is no orphan.
func TestRemoveOrphansKeepsPartlyLinkedStateDir(t *testing.T) {
	base := memBase(t, 0o700)
	stateDir := t.TempDir()
	mem := filepath.Join(base, "0123456789abcdef")
	if err := os.MkdirAll(filepath.Join(mem, "bundles"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mem, sourceFile), []byte(stateDir), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(stateDir, "runc"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(mem, "bundles"), filepath.Join(stateDir, "bundles")); err != nil {
		t.Fatal(err)
	}
	removeOrphans(base)
	if _, err := os.Stat(filepath.Join(stateDir, "bundles")); err != nil {
		t.Fatalf("the bundles target was removed: %v", err)
	}
	// Once nothing links into it, it goes.
	if err := os.Remove(filepath.Join(stateDir, "bundles")); err != nil {
		t.Fatal(err)
	}
	removeOrphans(base)
	if _, err := os.Stat(mem); err == nil {
		t.Error("an orphaned in-memory state dir was kept")
	}
}
