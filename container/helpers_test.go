package container

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/builder"
	"github.com/lbuild/lbuild/builder/buildertest"
	"github.com/lbuild/lbuild/system"
)

// testRoot is an opened root with its container manager: r.Store and
// r.Snaps come from the root, r.Create and friends from the manager.
type testRoot struct {
	*Manager
	*system.Root
}

func openRootAt(dir string) (*testRoot, error) {
	r, err := system.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := Recover(context.Background(), r); err != nil {
		return nil, err
	}
	return &testRoot{New(r), r}, nil
}

func openRoot(t testing.TB) *testRoot {
	t.Helper()
	r, err := openRootAt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func needRunc(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
}

func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// withBusybox builds the busybox base as local/busybox in r.
func withBusybox(t testing.TB, r *testRoot) {
	t.Helper()
	if _, err := os.Stat(buildertest.BusyboxPath); err != nil {
		t.Skip("busybox-static not installed")
	}
	if _, err := r.Store.Resolve("local/busybox"); err == nil {
		return
	}
	dir := t.TempDir()
	if err := buildertest.BusyboxContext(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := builder.Build(context.Background(), r.Root, builder.Options{ContextDir: dir, Tags: []string{"local/busybox"}}); err != nil {
		t.Fatal(err)
	}
}

func mustBuild(t testing.TB, r *testRoot, dir, dockerfile string, opts ...func(*builder.Options)) *builder.Result {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	o := builder.Options{ContextDir: dir}
	for _, f := range opts {
		f(&o)
	}
	res, err := builder.Build(context.Background(), r.Root, o)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return res
}

// layerNames lists the entry names of the layer tar of diffID in the store.
func layerNames(t testing.TB, r *testRoot, diffID string) []string {
	t.Helper()
	h, err := v1.NewHash(diffID)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := r.Store.OpenBlob(h)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var out []string
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hd.Name)
	}
}
