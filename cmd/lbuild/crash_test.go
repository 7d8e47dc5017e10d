package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbuild/lbuild/builder/buildertest"
)

// startRunBuild starts a build whose RUN sleeps, and returns once the
// runtime container is running.
func startRunBuild(t *testing.T, root string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	base := t.TempDir()
	if err := buildertest.BusyboxContext(base); err != nil {
		t.Skip(err)
	}
	if _, stderr, code := run(t, root, "build", "-t", "local/busybox", base); code != 0 {
		t.Fatal(stderr)
	}
	// The COPY is made on a tmpfs and frozen; the RUN stands on it (and
	// on the base's indexed layer, mounted for it) while it sleeps.
	dir := ctxDir(t, "FROM local/busybox\nCOPY f /f\nRUN touch /started && sleep 30\n", map[string]string{"f": "f\n"})
	cmd := exec.Command(lbuildBin, "--root", root, "build", "--progress=plain", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(runcList(t, root)) == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("RUN container never started:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd, &stderr
}

func runcList(t *testing.T, root string) []string {
	out, _ := exec.Command("runc", "--root", filepath.Join(root, "run", "runc"), "list", "-q").Output()
	return strings.Fields(string(out))
}

func assertNothingLeft(t *testing.T, root string) {
	t.Helper()
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, root) {
			t.Errorf("mount left behind: %s", l)
		}
	}
	if ids := runcList(t, root); len(ids) > 0 {
		t.Errorf("runtime containers left behind: %v", ids)
	}
}

// Ctrl-C stops the build, kills the container and unmounts everything.
func TestCLIInterrupt(t *testing.T) {
	root := t.TempDir()
	cmd, stderr := startRunBuild(t, root)
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("SIGINT did not stop the build")
	}
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(stderr.String(), "context canceled") {
		t.Errorf("exit %d, stderr:\n%s", cmd.ProcessState.ExitCode(), stderr)
	}
	assertNothingLeft(t, root)
}

// A build killed outright leaves its container and mounts; the next command
// that creates runtime state (build, run, and the container commands, here
// ps) cleans them up. Read-only commands (images) never reap anything.
func TestCLICrashRecovery(t *testing.T) {
	root := t.TempDir()
	cmd, _ := startRunBuild(t, root)
	cmd.Process.Kill()
	cmd.Wait()
	if len(runcList(t, root)) == 0 {
		t.Log("the runtime container died with lbuild; checking mounts only")
	}
	// Where layers are indexed, the killed build left the base's index
	// mounted in its RUN's snapshot (as it may leave a COPY's tmpfs, in
	// the same place): the clean-up below must take it too.
	if indexed, _ := filepath.Glob(filepath.Join(root, "snapshots", "layers", "*", "layer.erofs")); len(indexed) > 0 {
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		found := false
		for _, l := range strings.Split(string(mi), "\n") {
			found = found || strings.Contains(l, filepath.Join(root, "snapshots", "active")) && strings.Contains(l, " - erofs ")
		}
		if !found {
			t.Error("no EROFS mount under the root after the kill: the test checks less than it says")
		}
	}
	if _, stderr, code := run(t, root, "images"); code != 0 {
		t.Fatal(stderr)
	}
	if _, stderr, code := run(t, root, "ps"); code != 0 {
		t.Fatal(stderr)
	}
	assertNothingLeft(t, root)
}

// Read-only commands and container listings never fail because builds run
// RUN steps on the same root: clean-up touches only what is provably dead.
func TestCLICommandsBesideRunningBuilds(t *testing.T) {
	root := t.TempDir()
	cmd, stderr := startRunBuild(t, root) // one long RUN, alive throughout
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		run(t, root, "ps") // reaps the killed build's container and mounts
		assertNothingLeft(t, root)
	}()
	dir := ctxDir(t, "FROM local/busybox\nRUN true\nRUN echo a > /a\nRUN true\nRUN echo b > /b\nRUN true\n", map[string]string{})
	var builders []*exec.Cmd
	for i := 0; i < 2; i++ {
		b := exec.Command("sh", "-c", `for i in 1 2 3 4 5 6; do "$0" --root "$1" build -q --no-cache "$2" >/dev/null || exit 1; done`, lbuildBin, root, dir)
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		builders = append(builders, b)
	}
	for i := 0; i < 40; i++ {
		for _, c := range []string{"images", "ps"} {
			if _, errOut, code := run(t, root, c); code != 0 {
				t.Fatalf("lbuild %s beside running builds (round %d): exit %d: %s", c, i, code, errOut)
			}
		}
	}
	for _, b := range builders {
		if err := b.Wait(); err != nil {
			t.Errorf("a concurrent build failed: %v", err)
		}
	}
	if len(runcList(t, root)) == 0 {
		t.Errorf("the long RUN's container was reaped while its build ran:\n%s", stderr)
	}
}
