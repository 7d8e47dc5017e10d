package runc

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestContainerLifecycle runs a container through Create, Start, State,
// Exec, Signal and Delete, and checks that Cleanup (run by every build)
// leaves a live container alone.
func TestContainerLifecycle(t *testing.T) {
	r := newRunc(t)
	rootfs := newRootfs(t)
	ctx := context.Background()
	const id = "0123abcd"
	meta := Meta{Args: sh(`trap "echo bye; exit 7" TERM; echo up; while :; do sleep 0.05; done`), Env: []string{"PATH=/bin", "GREETING=hi"}}
	if err := r.Create(id, rootfs, meta); err != nil {
		t.Fatal(err)
	}
	defer r.Delete(ctx, id)
	var out bytes.Buffer
	p, err := r.Start(id, nil, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, err := r.State(ctx, id)
		if err == nil && st.Status == "running" && st.Pid > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container did not start: %+v %v", st, err)
		}
	}
	if err := r.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := r.State(ctx, id); err != nil || st.Status != "running" {
		t.Fatalf("Cleanup touched a container: %+v %v", st, err)
	}
	var eout bytes.Buffer
	if err := r.Exec(ctx, id, Meta{Args: sh("echo $GREETING; exit 3"), Env: []string{"PATH=/bin", "GREETING=exec"}, Stdout: &eout}); err == nil {
		t.Error("exec exit 3: no error")
	} else if ee := (*ExitError)(nil); !errors.As(err, &ee) || ee.Code != 3 {
		t.Errorf("exec: %v", err)
	}
	if eout.String() != "exec\n" {
		t.Errorf("exec output %q", eout.String())
	}
	// The default private network: exec joins it, slirp4netns serves it.
	eout.Reset()
	if err := r.Exec(ctx, id, Meta{Args: []string{"ip", "-o", "link"}, Env: []string{"PATH=/bin"}, Stdout: &eout}); err != nil ||
		!strings.Contains(eout.String(), "tap0") {
		t.Errorf("exec ip link: %v %q", err, eout.String())
	}
	if n := len(slirpProcs(r.bundles)); n != 1 {
		t.Errorf("%d slirp4netns processes while the container runs, want 1", n)
	}
	if err := r.Signal(ctx, id, syscall.SIGTERM, false); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait()
	if err != nil || code != 7 {
		t.Errorf("exit %d, %v", code, err)
	}
	if got := out.String(); !strings.Contains(got, "up\n") || !strings.Contains(got, "bye\n") {
		t.Errorf("output %q", got)
	}
	// The network went with the process: slirp4netns is killed, though
	// it may still be exiting.
	for deadline := time.Now().Add(10 * time.Second); len(slirpProcs(r.bundles)) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if pids := slirpProcs(r.bundles); len(pids) != 0 {
		t.Errorf("slirp4netns left after exit: %v", pids)
	}
	checkNoMounts(t, r.bundles)
	if err := r.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := r.State(ctx, id); !errors.Is(err, ErrNoContainer) {
		t.Errorf("after Delete: %v", err)
	}
}
