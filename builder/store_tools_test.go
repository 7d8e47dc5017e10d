package builder

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lbuild/lbuild/system"
)

// What lbuild builds is a plain OCI layout that real tools read: skopeo
// inspects it and umoci unpacks it to the files the Dockerfile put there.
func TestStoreReadByOCITools(t *testing.T) {
	for _, tool := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (hack/deps.sh installs it)", tool)
		}
	}
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"hello.txt": "hello from lbuild\n"})
	res, _ := mustBuild(t, r, dir, "FROM local/busybox\nCOPY hello.txt /srv/hello.txt\nCMD [\"cat\", \"/srv/hello.txt\"]\n",
		func(o *Options) { o.Tags = []string{"tools:1"} })

	out, err := exec.Command("skopeo", "inspect", "oci:"+r.Store.Dir()+":tools:1").CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, out)
	}
	for _, want := range []string{res.Image.Manifest.Digest.String(), `"Os": "linux"`, res.Image.Layers[1].Digest.String()} {
		if !strings.Contains(string(out), want) {
			t.Errorf("skopeo inspect lacks %s:\n%s", want, out)
		}
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	if out, err := exec.Command("umoci", "unpack", "--image", r.Store.Dir()+":tools:1", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "rootfs", "srv", "hello.txt"))
	if err != nil || string(data) != "hello from lbuild\n" {
		t.Errorf("unpacked file: %q %v", data, err)
	}
	if fi, err := os.Lstat(filepath.Join(bundle, "rootfs", "bin", "sh")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("busybox applet link missing from unpacked rootfs: %v", err)
	}
}

// Two builds on one root at once, from two processes' worth of state (two
// Root values): both succeed, and a third sees every step cached.
func TestConcurrentBuildsOneRoot(t *testing.T) {
	dirRoot := t.TempDir()
	r1, err := system.Open(dirRoot)
	if err != nil {
		t.Fatal(err)
	}
	withBusybox(t, r1)
	ctxDir := t.TempDir()
	writeFiles(t, ctxDir, map[string]string{"a": "a", "b": "b", "big/c": strings.Repeat("c", 1<<20)})
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM local/busybox\nCOPY a /a\nCOPY big /big\nCOPY b /b\n"), 0o644)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	ids := make([]string, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := system.Open(dirRoot)
			if err != nil {
				errs[i] = err
				return
			}
			res, err := Build(context.Background(), r, Options{ContextDir: ctxDir, Tags: []string{"same:1"}})
			if err == nil {
				ids[i] = res.Image.ID.String()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
	}
	res, _ := mustBuild(t, r1, ctxDir, "")
	if got := cachedFlags(res); !equalBools(got, []bool{true, true, true}) {
		t.Errorf("after concurrent builds: cached %v", got)
	}
	img, err := r1.Store.Resolve("same:1")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, id := range ids {
		found = found || id == img.ID.String()
	}
	if !found {
		t.Errorf("tag points at %s, none of the builds' images %v", img.ID, ids)
	}
}

func TestOpenUnwritableRoot(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	_, err := system.Open(filepath.Join(file, "root"))
	if err == nil || !strings.Contains(err.Error(), "not writable") || !strings.Contains(err.Error(), "--root") || strings.Contains(err.Error(), "\n") {
		t.Errorf("unwritable root: %v", err)
	}
}
