package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestHelperProcess is not a test: testCleanup runs it in a child process,
// which prepares snapshots and exits without removing them.
func TestHelperProcess(t *testing.T) {
	dir, driver := os.Getenv("SNAPSHOT_HELPER_DIR"), os.Getenv("SNAPSHOT_HELPER_DRIVER")
	if dir == "" {
		return
	}
	ctx := context.Background()
	s, err := New(dir, driver)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(os.Getenv("SNAPSHOT_HELPER_MANY")); n > 0 {
		for i := range n {
			if _, err := s.Prepare(ctx, fmt.Sprintf("dead-%d", i), ""); err != nil {
				t.Fatal(err)
			}
		}
		os.Exit(0) // as if the process died
	}
	v, err := s.Prepare(ctx, "crashed", "")
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(v, "f"), "x", 0o644)
	pv, err := s.Prepare(ctx, "container", "", WithPersistent())
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(pv, "state"), "running", 0o644)
	// A temp dir of an Apply that died half way.
	tmp, err := s.(*snapshotter).newTemp("apply-")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(tmp.path, "fs"), 0o755)
	os.Exit(0) // no Remove, no unlock: as if the process died
}

func testCleanup(t *testing.T, driver string) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, driver)
	// A live snapshot of this process must survive Cleanup.
	live, err := s.Prepare(ctx, "live", "")
	check(t, err)
	mustWrite(t, filepath.Join(live, "f"), "live", 0o644)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "SNAPSHOT_HELPER_DIR="+dir, "SNAPSHOT_HELPER_DRIVER="+driver)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	crashed := filepath.Join(dir, "active", keyID("crashed"))
	container := filepath.Join(dir, "active", keyID("container"))
	if !exists(crashed) || !exists(container) {
		t.Fatal("helper did not leave its snapshots")
	}
	if driver == DriverOverlay && len(mountsUnder(t, dir)) != 3 {
		t.Fatalf("want 3 mounts before Cleanup, have %v", mountsUnder(t, dir))
	}
	tmps, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	if len(tmps) != 2 {
		t.Fatalf("want the helper's temp dir and lock, have %v", tmps)
	}

	check(t, s.Cleanup(ctx))
	if exists(crashed) {
		t.Error("Cleanup left the dead process's snapshot")
	}
	if !exists(container) {
		t.Error("Cleanup removed a persistent snapshot")
	}
	if got := mustRead(t, filepath.Join(live, "f")); got != "live" {
		t.Errorf("live view damaged: %q", got)
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmps) != 0 {
		t.Errorf("Cleanup left temp dirs %v", tmps)
	}
	if driver == DriverOverlay {
		want := []string{filepath.Join(container, "merged"), filepath.Join(live, "")}
		if got := mountsUnder(t, dir); len(got) != 2 || !(got[0] == want[0] && got[1] == want[1] || got[0] == want[1] && got[1] == want[0]) {
			t.Errorf("mounts after Cleanup: %v, want %v", got, want)
		}
		if got := mustRead(t, filepath.Join(container, "merged", "state")); got != "running" {
			t.Errorf("persistent view: %q", got)
		}
	}

	// Another process can take over the persistent snapshot and commit it.
	name := ChainID("", "sha256:"+string(bytes.Repeat([]byte("c"), 64)))
	check(t, s.Diff(ctx, "container", io.Discard))
	check(t, s.Commit(ctx, name, "container"))
	check(t, s.Remove(ctx, "live"))
	check(t, s.Cleanup(ctx))
	if m := mountsUnder(t, dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "active")); len(ents) != 0 {
		t.Errorf("active left: %v", ents)
	}
	v, err := s.View(ctx, "check", name)
	check(t, err)
	if got := mustRead(t, filepath.Join(v, "state")); got != "running" {
		t.Errorf("committed container state: %q", got)
	}
	check(t, s.Remove(ctx, "check"))
}

// Volatile tells a --rm container's snapshot from a kept one's; one whose
// metadata a crash cut reads as ErrCorrupt, and Remove still removes it.
func TestVolatileAndCutMetadata(t *testing.T) {
	for _, driver := range []string{DriverOverlay, DriverCopy} {
		t.Run(driver, func(t *testing.T) {
			s, _ := newTestSnapshotter(t, driver)
			ctx := context.Background()
			if _, err := s.Prepare(ctx, "rm", "", WithPersistent(), Volatile()); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Prepare(ctx, "kept", "", WithPersistent()); err != nil {
				t.Fatal(err)
			}
			for key, want := range map[string]bool{"rm": true, "kept": false} {
				if v, err := s.Volatile(key); err != nil || v != want {
					t.Errorf("Volatile(%s) = %v, %v; want %v", key, v, err, want)
				}
			}
			if _, err := s.Volatile("none"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Volatile of no snapshot: %v", err)
			}
			dir := filepath.Join(s.root, "active", keyID("rm"))
			check(t, unmount(filepath.Join(dir, "merged")))
			check(t, os.Truncate(filepath.Join(dir, "meta.json"), 0))
			if _, err := s.Volatile("rm"); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Volatile of a cut snapshot: %v", err)
			}
			check(t, s.Remove(ctx, "rm"))
			if exists(dir) {
				t.Error("the cut snapshot's directory is still there")
			}
			if err := s.Remove(ctx, "rm"); !errors.Is(err, ErrNotFound) {
				t.Errorf("second Remove: %v", err)
			}
			check(t, s.Remove(ctx, "kept"))
		})
	}
}

// A kept container's layer (persistent, not volatile) survives Cleanup even
// when its metadata is damaged: the synced keep marker says it is kept.
func TestCleanupKeepsKeptSnapshotWithDamagedMetadata(t *testing.T) {
	s, _ := newTestSnapshotter(t, DriverOverlay)
	ctx := context.Background()
	if _, err := s.Prepare(ctx, "kept", "", WithPersistent()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prepare(ctx, "rm", "", WithPersistent(), Volatile()); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"kept", "rm"} {
		dir := filepath.Join(s.root, "active", keyID(key))
		check(t, unmount(filepath.Join(dir, "merged")))
		check(t, os.Truncate(filepath.Join(dir, "meta.json"), 0))
	}
	check(t, s.Cleanup(ctx))
	if !exists(filepath.Join(s.root, "active", keyID("kept"))) {
		t.Error("Cleanup removed a kept container's layer whose metadata was damaged")
	}
	if exists(filepath.Join(s.root, "active", keyID("rm"))) {
		t.Error("Cleanup left a --rm container's layer whose metadata a crash cut")
	}
	check(t, s.Remove(ctx, "kept"))
}

// A Cleanup beside snapshots being made and removed never fails on one
// that vanishes under it (it listed a directory another process then
// renamed away: "open …/lock: no such file or directory" failed
// 'lbuild ps' beside running builds).
func TestCleanupBesideRemovals(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, DriverOverlay)
	base := applyBase(t, s)
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(done)
		for i := range 200 {
			key := fmt.Sprintf("k%d", i)
			if _, err := s.Prepare(ctx, key, base); err != nil {
				errc <- err
				return
			}
			if err := s.Remove(ctx, key); err != nil {
				errc <- err
				return
			}
		}
	}()
	n := 0
	for running := true; running; n++ {
		select {
		case <-done:
			running = false
		default:
		}
		if err := s.Cleanup(ctx); err != nil {
			t.Fatalf("Cleanup %d beside removals: %v", n, err)
		}
	}
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
}

// Removing a dead process's snapshots while a Cleanup deletes them: each
// Remove finds its snapshot or ErrNotFound, never a half deleted directory,
// and the Cleanup never fails on one.
func TestRemoveBesideCleanupOfDeadSnapshots(t *testing.T) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, DriverOverlay)
	const n = 60
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "SNAPSHOT_HELPER_DIR="+dir, "SNAPSHOT_HELPER_DRIVER="+DriverOverlay, fmt.Sprintf("SNAPSHOT_HELPER_MANY=%d", n))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	cleaned := make(chan error, 1)
	go func() { cleaned <- s.Cleanup(ctx) }()
	for i := n - 1; i >= 0; i-- {
		if err := s.Remove(ctx, fmt.Sprintf("dead-%d", i)); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("Remove dead-%d beside a Cleanup: %v", i, err)
		}
	}
	if err := <-cleaned; err != nil {
		t.Errorf("Cleanup beside Removes: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "active")); len(ents) != 0 {
		t.Errorf("active left: %d", len(ents))
	}
}
