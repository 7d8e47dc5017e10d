package snapshot

import (
	"context"
	"os"
	"strings"
	"testing"
)

// A build step's or a --rm container's overlay is volatile (no syncs: it
// is disposable); a kept container's is not, so that an fsync in it is one
// and its layer mounts again after a crash.
func TestKeptContainerOverlayNotVolatile(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, DriverOverlay)
	base := applyBase(t, s)
	for _, tc := range []struct {
		key  string
		opts []Opt
		want bool
	}{
		{"step", nil, true},
		{"rm-container", []Opt{WithPersistent(), Volatile()}, true},
		{"kept-container", []Opt{WithPersistent()}, false},
	} {
		v, err := s.Prepare(ctx, tc.key, base, tc.opts...)
		check(t, err)
		opts := superOptions(t, v)
		// Newer kernels show the option as fsync=volatile.
		got := strings.Contains(","+opts+",", ",volatile,") || strings.Contains(","+opts+",", ",fsync=volatile,")
		if got != tc.want && !(tc.want && s.noVolatile.Load()) {
			t.Errorf("%s: overlay options %q, volatile %v, want %v", tc.key, opts, got, tc.want)
		}
		check(t, s.Remove(ctx, tc.key))
	}
}

// superOptions returns the super options of the mount at path, from
// /proc/self/mountinfo.
func superOptions(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	check(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || f[4] != path {
			continue
		}
		for i, x := range f {
			if x == "-" && i+3 < len(f) {
				return f[i+3]
			}
		}
	}
	t.Fatalf("%s is not a mount point", path)
	return ""
}
