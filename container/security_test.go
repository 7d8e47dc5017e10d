package container

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A container's processes, exec'd ones too, run under Docker's default
// seccomp profile unless it was created with --security-opt
// seccomp=unconfined; other security options are refused.
func TestContainerSeccomp(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "img")
	status := []string{"grep", "Seccomp:", "/proc/self/status"}
	if _, out := runFG(t, r, "img", status...); out != "Seccomp:\t2\n" {
		t.Errorf("default: %q", out)
	}

	for _, tc := range []struct {
		opts []string
		want string
	}{
		{nil, "Seccomp:\t2\n"},
		{[]string{"seccomp=unconfined"}, "Seccomp:\t0\n"},
	} {
		c := create(t, r, Options{Image: "img", Cmd: loopCmd, SecurityOpts: tc.opts})
		done := startBG(t, r, c)
		if out := execOut(t, r, c, status...); out != tc.want {
			t.Errorf("exec in a container with %q: %q, want %q", tc.opts, out, tc.want)
		}
		if got, err := r.Get(context.Background(), c.ID); err != nil || len(got.SecurityOpts) != len(tc.opts) {
			t.Errorf("record: %+v, %v", got, err)
		}
		if err := r.Stop(context.Background(), c.ID, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		<-done
	}

	_, err := r.Create(context.Background(), Options{Image: "img", Name: "bad", SecurityOpts: []string{"apparmor=unconfined"}})
	if err == nil || !strings.Contains(err.Error(), "seccomp=unconfined") {
		t.Fatalf("apparmor option: %v", err)
	}
	if _, err := r.Get(context.Background(), "bad"); err == nil {
		t.Error("a refused container was recorded")
	}
}
