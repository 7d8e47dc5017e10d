package builder

import (
	"strings"
	"testing"
)

// A RUN step runs under Docker's default seccomp profile; RUN
// --security=insecure, which BuildKit runs privileged, is refused with the
// line it is on, and the store is left as it was.
func TestRunSeccompAndInsecure(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	res, _ := mustBuild(t, r, dir, "FROM local/busybox\nRUN grep Seccomp: /proc/self/status > /seccomp\n")
	if e, _ := find(layerEntries(t, r, res.Steps[1].DiffID), "seccomp"); e.body != "Seccomp:\t2\n" {
		t.Errorf("RUN: %q", e.body)
	}
	before, err := r.Store.Images()
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = tryBuild(r, dir, "FROM local/busybox\nRUN --security=insecure true\n", func(o *Options) { o.Tags = []string{"insecure"} })
	if err == nil || !strings.Contains(err.Error(), "--security=insecure is not supported") || !strings.Contains(err.Error(), "Dockerfile:2") {
		t.Errorf("RUN --security=insecure: %v", err)
	}
	if after, _ := r.Store.Images(); len(after) != len(before) {
		t.Errorf("images: %d before, %d after", len(before), len(after))
	}
	if _, _, err := tryBuild(r, dir, "FROM local/busybox\nRUN --security=sandbox true\n"); err != nil {
		t.Errorf("RUN --security=sandbox: %v", err)
	}
}
