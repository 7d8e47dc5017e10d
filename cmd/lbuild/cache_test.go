package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbuild/lbuild/builder/buildertest"
	"github.com/lbuild/lbuild/internal/registrytest"
)

// cacheDockerfile builds its own busybox base, so a fresh store needs
// nothing but the cache; each RUN says when it runs, and the last one
// shows what its cache mount held before it. (The arithmetic keeps
// "ran-N" out of the step's own text in the progress output.)
const cacheDockerfile = `FROM scratch AS base
COPY rootfs/ /
FROM base
RUN echo ran-$((0+1)) && echo one > /one
COPY a.txt /a.txt
RUN echo ran-$((0+2)) && cat /a.txt > /b
RUN --mount=type=cache,id=pkgs,target=/pkgs sh -c 'echo ran-$((0+3)); cat /pkgs/dl 2>/dev/null; echo fetched-$(cat /a.txt) > /pkgs/dl'
ENV X=1
`

// ranAny reports whether a RUN of cacheDockerfile printed its marker.
func ranAny(log string) bool {
	return strings.Contains(log, "ran-1") || strings.Contains(log, "ran-2") || strings.Contains(log, "ran-3")
}

func cacheCtx(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	dir := t.TempDir()
	if err := buildertest.BusyboxContext(dir); err != nil {
		t.Skip(err)
	}
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(cacheDockerfile), 0o644)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("A"), 0o644)
	return dir
}

// buildID builds quietly with args and returns the image ID.
func buildID(t *testing.T, root string, args ...string) string {
	t.Helper()
	out, stderr, code := run(t, root, append([]string{"build", "-q"}, args...)...)
	if code != 0 {
		t.Fatalf("build %v: exit %d\n%s", args, code, stderr)
	}
	return strings.TrimSpace(out)
}

// buildLog builds with plain progress (-q hides it) and returns it.
func buildLog(t *testing.T, root string, args ...string) string {
	t.Helper()
	_, stderr, code := run(t, root, append([]string{"build", "--progress=plain"}, args...)...)
	if code != 0 {
		t.Fatalf("build %v: exit %d\n%s", args, code, stderr)
	}
	return stderr
}

func unpacked(t *testing.T, root string) string {
	out, _, _ := run(t, root, "du")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "Layer snapshots:") {
			return strings.TrimSpace(l)
		}
	}
	return out
}

func imageID(t *testing.T, root, ref string) string {
	out, stderr, code := run(t, root, "inspect", ref)
	if code != 0 {
		t.Fatalf("inspect %s: %s", ref, stderr)
	}
	var v []struct{ Id string }
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) != 1 {
		t.Fatalf("inspect %s: %v\n%s", ref, err, out)
	}
	return v[0].Id
}

// TestCacheDirFreshStore: a cache dir, moved, makes a fresh store build
// fully cached (nothing runs, no layer unpacked, the same image ID); one
// changed context file reruns only the steps from its COPY on, and the
// rerun RUN finds its cache mount as the exporting build left it.
func TestCacheDirFreshStore(t *testing.T) {
	ctx := cacheCtx(t)
	cdir := filepath.Join(t.TempDir(), "ci-cache")
	log := buildLog(t, t.TempDir(), "-t", "app", "--cache-to", "type=local,dest="+cdir+",mounts=true", ctx)
	for _, s := range []string{"ran-1", "ran-2", "ran-3", "exported cache to"} {
		if !strings.Contains(log, s) {
			t.Fatalf("first build: no %q in\n%s", s, log)
		}
	}
	want := strings.Fields(log[strings.Index(log, "writing image "):])[2]

	restored := filepath.Join(t.TempDir(), "restored")
	if err := os.Rename(cdir, restored); err != nil {
		t.Fatal(err)
	}
	fresh := t.TempDir()
	log = buildLog(t, fresh, "-t", "app", "--cache-from", "type=local,src="+restored, ctx)
	if ranAny(log) {
		t.Errorf("a step ran on the fresh store:\n%s", log)
	}
	if got := imageID(t, fresh, "app"); got != want {
		t.Errorf("image ID %s, want the exporting build's %s", got, want)
	}
	if u := unpacked(t, fresh); !strings.HasPrefix(u, "Layer snapshots: 0,") {
		t.Errorf("du: %s, want no layer unpacked", u)
	}

	// The imported records stay in the store's own cache.
	if log := buildLog(t, fresh, ctx); ranAny(log) {
		t.Errorf("a build without --cache-from after an imported one ran a step:\n%s", log)
	}

	os.WriteFile(filepath.Join(ctx, "a.txt"), []byte("B"), 0o644)
	log = buildLog(t, t.TempDir(), "--cache-from", "type=local,src="+restored, ctx)
	if strings.Contains(log, "ran-1") || !strings.Contains(log, "ran-2") || !strings.Contains(log, "ran-3") {
		t.Errorf("after changing a.txt, want only the steps from COPY a.txt on to run:\n%s", log)
	}
	if !strings.Contains(log, "fetched-A") {
		t.Errorf("the RUN's cache mount did not start with the exported contents (fetched-A):\n%s", log)
	}
}

// TestCacheDirMaxSize: over repeated builds with new content the dir stays
// under max-size, and it still serves the newest build fully cached.
func TestCacheDirMaxSize(t *testing.T) {
	ctx := ctxDir(t, "FROM scratch\nCOPY big.bin /\nCOPY n.txt /\n", map[string]string{})
	cdir := filepath.Join(t.TempDir(), "c")
	const max = 700 << 10
	root := t.TempDir()
	var id string
	for i := 0; i < 6; i++ {
		big := make([]byte, 200<<10)
		rand.Read(big)
		os.WriteFile(filepath.Join(ctx, "big.bin"), big, 0o644)
		os.WriteFile(filepath.Join(ctx, "n.txt"), []byte(fmt.Sprint(i)), 0o644)
		id = buildID(t, root, "--cache-to", "type=local,dest="+cdir+",max-size=700k", ctx)
		if n := treeSize(cdir); n > max {
			t.Fatalf("build %d: cache dir holds %d bytes, max-size is %d", i, n, max)
		}
	}
	fresh := t.TempDir()
	log := buildLog(t, fresh, "-t", "last", "--cache-from", "type=local,src="+cdir, ctx)
	if got := imageID(t, fresh, "last"); got != id || strings.Count(log, "CACHED") != 2 {
		t.Errorf("newest build from the bounded dir: id %s (want %s), log:\n%s", imageID(t, fresh, "last"), id, log)
	}
}

func treeSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// TestCacheFromMissingOrCorrupt: a cache that is not there yet, or is
// garbage, is one warning line and the build goes on.
func TestCacheFromMissingOrCorrupt(t *testing.T) {
	ctx := ctxDir(t, "FROM scratch\nCOPY a.txt /\n", map[string]string{"a.txt": "A"})
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "index.json"), []byte("{garbage"), 0o644)
	_, stderr, code := run(t, t.TempDir(), "build", "-q", "--cache-from", "type=local,src="+filepath.Join(bad, "none"),
		"--cache-from", "type=local,src="+bad, ctx)
	if code != 0 {
		t.Fatalf("build failed: %s", stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "no cache there yet") || !strings.Contains(lines[1], "corrupt cache") {
		t.Errorf("want two one-line warnings, got:\n%s", stderr)
	}
	if _, stderr, code := run(t, t.TempDir(), "build", "--cache-to", "type=local", ctx); code == 0 || !strings.Contains(stderr, "needs dest=DIR") {
		t.Errorf("bad --cache-to: %d %s", code, stderr)
	}
}

// regCounter counts the blob uploads and manifest puts a registry sees.
type regCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *regCounter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		switch {
		case strings.Contains(r.URL.Path, "/blobs/uploads/"):
			c.n["upload "+r.Method]++
		case strings.Contains(r.URL.Path, "/manifests/") && r.Method == http.MethodPut:
			c.n["manifest PUT"]++
		}
		c.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (c *regCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

// startCountingRegistry runs Debian's docker-registry on 127.0.0.1 behind
// a counting proxy and returns the proxy's host:port.
func startCountingRegistry(t *testing.T, cnt *regCounter) string {
	t.Helper()
	addr := registrytest.Start(t, "", http.StatusOK)
	cnt.n = map[string]int{}
	return registrytest.Proxy(t, addr, cnt.wrap)
}

// TestCacheRegistry: two builds exporting to one registry ref at once both
// succeed; a third, fresh store builds fully cached from it with no layer
// unpacked and one of their image IDs; exporting an unchanged build again
// uploads no blob, only the manifest.
func TestCacheRegistry(t *testing.T) {
	ctx := cacheCtx(t)
	cnt := &regCounter{}
	ref := startCountingRegistry(t, cnt) + "/ci/app:cache"
	to := "type=registry,ref=" + ref + ",mounts=true"
	ids := make([]string, 2)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(lbuildBin, "--root", t.TempDir(), "build", "-q", "--cache-to", to, ctx)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Errorf("concurrent export %d: %v: %s", i, err, stderr.String())
			}
			ids[i] = strings.TrimSpace(string(out))
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if n := cnt.take(); n["manifest PUT"] < 2 { // a retried push may put it again
		t.Errorf("want both builds to put the manifest, got %v", n)
	}

	fresh := t.TempDir()
	log := buildLog(t, fresh, "-t", "app", "--cache-from", "type=registry,ref="+ref, "--cache-to", to, ctx)
	if ranAny(log) {
		t.Errorf("a step ran on the fresh store:\n%s", log)
	}
	if id := imageID(t, fresh, "app"); id != ids[0] && id != ids[1] {
		t.Errorf("image ID %s is neither exporter's %v", id, ids)
	}
	if u := unpacked(t, fresh); !strings.HasPrefix(u, "Layer snapshots: 0,") {
		t.Errorf("du: %s, want no layer unpacked", u)
	}
	cnt.take()
	buildLog(t, fresh, "-t", "app", "--cache-from", "type=registry,ref="+ref, "--cache-to", to, ctx)
	n := cnt.take()
	if n["upload POST"]+n["upload PATCH"]+n["upload PUT"] != 0 || n["manifest PUT"] != 1 {
		t.Errorf("second export of an unchanged build: %v, want no blob upload and one manifest put", n)
	}
}

// TestCacheNeverHoldsSecrets: a secret a RUN reads (from a file or into an
// env var) is in no exported blob, not even with mounts=true.
func TestCacheNeverHoldsSecrets(t *testing.T) {
	ctx := cacheCtx(t)
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(`FROM scratch AS base
COPY rootfs/ /
FROM base
RUN --mount=type=secret,id=tok --mount=type=secret,id=tok,env=TOK --mount=type=cache,id=c,target=/c sh -c 'cat /run/secrets/tok > /dev/null; echo "$TOK" | wc -c > /c/n'
`), 0o644)
	secret := "s3cr3t-" + fmt.Sprint(time.Now().UnixNano())
	sf := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(sf, []byte(secret), 0o600)
	cdir := filepath.Join(t.TempDir(), "c")
	buildLog(t, t.TempDir(), "--secret", "id=tok,src="+sf, "--cache-to", "type=local,dest="+cdir+",mounts=true", ctx)
	filepath.Walk(cdir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), secret) {
			t.Errorf("the secret is in %s", p)
		}
		return nil
	})
}

// TestCacheDirInsideContext: a cache dir inside the context draws a
// warning until .dockerignore leaves it out; then a fresh store builds
// fully cached from it.
func TestCacheDirInsideContext(t *testing.T) {
	ctx := ctxDir(t, "FROM scratch\nCOPY . /\n", map[string]string{"a.txt": "A"})
	cdir := filepath.Join(ctx, ".lbuild-cache")
	_, stderr, code := run(t, t.TempDir(), "build", "-q", "--cache-dir", cdir, ctx)
	if code != 0 || !strings.Contains(stderr, "add .lbuild-cache to .dockerignore") {
		t.Errorf("want a warning about the cache dir in the context: %d\n%s", code, stderr)
	}
	os.WriteFile(filepath.Join(ctx, ".dockerignore"), []byte(".lbuild-cache\n"), 0o644)
	id := buildID(t, t.TempDir(), "--cache-dir", cdir, ctx)
	_, stderr, _ = run(t, t.TempDir(), "build", "-q", "--cache-dir", cdir, ctx)
	if strings.Contains(stderr, "dockerignore") {
		t.Errorf("warning despite .dockerignore:\n%s", stderr)
	}
	fresh := t.TempDir()
	log := buildLog(t, fresh, "-t", "x", "--cache-dir", cdir, ctx)
	if got := imageID(t, fresh, "x"); got != id || !strings.Contains(log, "CACHED") {
		t.Errorf("fresh store: id %s, want %s; log:\n%s", got, id, log)
	}
}

// TestCacheExportKilled: a build killed while it exports (here: while it
// writes a big cache mount's tar into the dir) leaves the previous cache
// readable: a fresh store still builds the earlier build fully cached, and
// the next export succeeds and clears the leftovers.
func TestCacheExportKilled(t *testing.T) {
	ctx := cacheCtx(t)
	cdir := filepath.Join(t.TempDir(), "c")
	want := buildID(t, t.TempDir(), "--cache-to", "type=local,dest="+cdir, ctx)

	before, _ := os.ReadFile(filepath.Join(cdir, "index.json"))
	big := cacheCtx(t)
	os.WriteFile(filepath.Join(big, "Dockerfile"), []byte("FROM scratch\nCOPY rootfs/ /\nRUN --mount=type=cache,id=big,target=/c dd if=/dev/zero of=/c/big bs=1M count=300\n"), 0o644)
	cmd := exec.Command(lbuildBin, "--root", t.TempDir(), "build", "-q", "--cache-to", "type=local,dest="+cdir+",mounts=true", big)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	killed := false
	for !killed {
		select {
		case err := <-done:
			t.Fatalf("the export finished (%v) before it could be killed", err)
		default:
		}
		if tmp, _ := filepath.Glob(filepath.Join(cdir, "blobs", "sha256", ".tmp-*")); len(tmp) > 0 {
			cmd.Process.Kill()
			<-done
			killed = true
		}
		time.Sleep(time.Millisecond)
	}
	if after, _ := os.ReadFile(filepath.Join(cdir, "index.json")); string(after) != string(before) {
		t.Errorf("a killed export changed index.json")
	}
	fresh := t.TempDir()
	log := buildLog(t, fresh, "-t", "app", "--cache-from", "type=local,src="+cdir, ctx)
	if ranAny(log) || strings.Contains(log, "warning") {
		t.Errorf("the cache left by a killed export is not the previous one:\n%s", log)
	}
	if got := imageID(t, fresh, "app"); got != want {
		t.Errorf("image ID %s, want %s", got, want)
	}
	buildID(t, fresh, "--cache-to", "type=local,dest="+cdir, ctx)
	if tmp, _ := filepath.Glob(filepath.Join(cdir, "blobs", "sha256", ".tmp-*")); len(tmp) > 0 {
		t.Errorf("leftovers of the killed export remain: %v", tmp)
	}
}

// TestCacheImportIsLazy: on a fresh store, a fully cached multi-stage build
// brings into its store only the layers of the result image, not those of
// a stage it copied from (--cache-dir, which also exports, included).
func TestCacheImportIsLazy(t *testing.T) {
	big := make([]byte, 1<<20)
	rand.Read(big)
	ctx := ctxDir(t, "FROM scratch AS build\nCOPY big.bin small.txt /\nFROM scratch\nCOPY --from=build /small.txt /\n",
		map[string]string{"big.bin": string(big), "small.txt": "small"})
	cdir := filepath.Join(t.TempDir(), "c")
	want := buildID(t, t.TempDir(), "--cache-dir", cdir, ctx)
	fresh := t.TempDir()
	log := buildLog(t, fresh, "-t", "x", "--cache-dir", cdir, ctx)
	if got := imageID(t, fresh, "x"); got != want || strings.Count(log, "CACHED") != 2 {
		t.Fatalf("id %s, want %s; log:\n%s", got, want, log)
	}
	ents, _ := os.ReadDir(filepath.Join(fresh, "oci", "blobs", "sha256"))
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Size() >= 1<<20 {
			t.Errorf("the build stage's layer %s was brought into the store", e.Name())
		}
	}
}

// A layer of --cache-from that is corrupt when the build fetches it (same
// size, so reading the cache did not catch it) is a miss: the build warns,
// runs that step again and gives the exporter's very image (builds are
// reproducible).
func TestCacheFromCorruptLayerIsAMiss(t *testing.T) {
	root1, root2 := t.TempDir(), t.TempDir()
	cacheDir := filepath.Join(t.TempDir(), "cache")
	dir := ctxDir(t, "FROM scratch\nCOPY a /a\nCOPY b /b\n", map[string]string{"a": "content of a", "b": "content of b"})
	out, stderr, code := run(t, root1, "build", "-q", "--cache-to", "type=local,dest="+cacheDir, dir)
	if code != 0 {
		t.Fatalf("exporting build: %s", stderr)
	}
	want := strings.TrimSpace(out)
	// Replace (not modify: it is a hard link to root1's blob) the biggest
	// layer blob with bytes of the same size.
	var victim string
	var size int64
	ents, _ := os.ReadDir(filepath.Join(cacheDir, "blobs", "sha256"))
	for _, e := range ents {
		p := filepath.Join(cacheDir, "blobs", "sha256", e.Name())
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("content of a")) {
			victim, size = p, int64(len(b))
		}
	}
	if victim == "" {
		t.Fatal("no layer blob holding a in the cache dir")
	}
	b, _ := os.ReadFile(victim)
	b = bytes.Replace(b, []byte("content of a"), []byte("CONTENT OF A"), 1)
	os.Remove(victim)
	if err := os.WriteFile(victim, b, 0o444); err != nil || int64(len(b)) != size {
		t.Fatal(err)
	}
	out, stderr, code = run(t, root2, "build", "-q", "--cache-from", "type=local,src="+cacheDir, dir)
	if code != 0 {
		t.Fatalf("a corrupt cached layer failed the build: %s", stderr)
	}
	if got := strings.TrimSpace(out); got != want {
		t.Errorf("image %s, want the exporter's %s", got, want)
	}
	if !strings.Contains(stderr, "cannot be used") || !strings.Contains(stderr, "building again without it") {
		t.Errorf("no warning about the corrupt layer:\n%s", stderr)
	}
}
