package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCheckReproducible: the check passes on a reproducible Dockerfile and
// names the file a RUN writes the date into.
func TestCheckReproducible(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	check := func(tag, dockerfile string) error {
		dir := reproContext(t, time.Now())
		if dockerfile != "" {
			writeFiles(t, dir, map[string]string{"Dockerfile": dockerfile})
		}
		res, _ := mustBuild(t, r, dir, "", func(o *Options) { o.Tags = []string{tag} })
		return CheckReproducible(context.Background(), r, Options{ContextDir: dir, Tags: []string{tag}}, res)
	}
	if err := check("good", ""); err != nil {
		t.Fatalf("reproducible Dockerfile: %v", err)
	}
	imgs, err := r.Store.Images()
	if err != nil {
		t.Fatal(err)
	}
	n := len(imgs)
	err = check("bad", "FROM local/busybox\nRUN echo same > /same\nRUN mkdir -p /var/build && date > /var/build/stamp\n")
	if !errors.Is(err, ErrNotReproducible) {
		t.Fatalf("a RUN that writes the date: %v, want ErrNotReproducible", err)
	}
	for _, want := range []string{"/var/build/stamp", "layer 3 of 3", "date > /var/build/stamp", "content"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q: %v", want, err)
		}
	}
	// The second build's image does not stay in the store, nor its scratch area.
	if imgs, _ := r.Store.Images(); len(imgs) != n+1 {
		t.Errorf("%d images after the failed check, want %d (the first build's only)", len(imgs), n+1)
	}
	if m, _ := filepath.Glob(filepath.Join(r.Dir, "check-*")); len(m) > 0 {
		t.Errorf("scratch areas left: %v", m)
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), filepath.Join(r.Dir, "check-")) {
		t.Errorf("mounts left in the scratch area:\n%s", mi)
	}
}
