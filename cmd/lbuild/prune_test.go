package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/lbuild/lbuild/builder/buildertest"
)

// mustRun runs lbuild and fails the test unless it exits 0.
func mustRun(t *testing.T, root string, args ...string) string {
	t.Helper()
	out, stderr, code := run(t, root, args...)
	if code != 0 {
		t.Fatalf("lbuild %v: exit %d: %s", args, code, stderr)
	}
	return out
}

// busyboxBase builds local/busybox in root, or skips without runc/busybox.
func busyboxBase(t *testing.T, root string) {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	dir := t.TempDir()
	if err := buildertest.BusyboxContext(dir); err != nil {
		t.Skip(err)
	}
	mustRun(t, root, "build", "-q", "-t", "local/busybox", dir)
}

// diffIDs returns an image's layer diff IDs (lbuild inspect).
func diffIDs(t *testing.T, root, image string) []string {
	t.Helper()
	var got []struct {
		RootFS struct{ Layers []string }
	}
	if err := json.Unmarshal([]byte(mustRun(t, root, "inspect", image)), &got); err != nil || len(got) != 1 {
		t.Fatalf("inspect %s: %v", image, err)
	}
	return got[0].RootFS.Layers
}

func blobExists(root, digest string) bool {
	_, err := os.Stat(filepath.Join(root, "oci", "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")))
	return err == nil
}

func countDir(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(ents)
}

// Ten variants, eight removed: prune frees their own layers (blobs and
// unpacked snapshots) and keeps what the other two images and a running
// container need; those still run and rebuild fully cached.
func TestCLIPruneKeepsWhatIsUsed(t *testing.T) {
	root := t.TempDir()
	busyboxBase(t, root)
	df := "FROM local/busybox\nCOPY f /f\nRUN cat /f /f > /g\n"
	dir := ctxDir(t, df, map[string]string{"f": "x"})
	var unique [][]string
	for i := 0; i < 10; i++ {
		os.WriteFile(filepath.Join(dir, "f"), []byte("variant "+strconv.Itoa(i)), 0o644)
		mustRun(t, root, "build", "-q", "-t", "v:"+strconv.Itoa(i), dir)
		ids := diffIDs(t, root, "v:"+strconv.Itoa(i))
		unique = append(unique, ids[len(ids)-2:])
		mustRun(t, root, "run", "--rm", "v:"+strconv.Itoa(i), "true") // unpacks it
	}
	ctr := strings.TrimSpace(mustRun(t, root, "run", "-d", "--name", "keeper", "v:9", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"))
	defer run(t, root, "rm", "-f", ctr)
	for i := 0; i < 8; i++ {
		mustRun(t, root, "rmi", "v:"+strconv.Itoa(i))
	}
	layersBefore := countDir(t, filepath.Join(root, "snapshots", "layers"))
	manifestsBefore := countDir(t, filepath.Join(root, "cache", "manifests", "blobs", "sha256"))

	out := mustRun(t, root, "prune")
	if !strings.HasPrefix(out, "Freed ") {
		t.Errorf("prune printed %q", out)
	}
	for i, ids := range unique {
		for _, d := range ids {
			if got := blobExists(root, d); got != (i >= 8) {
				t.Errorf("after prune, layer %s of v:%d exists=%v", d, i, got)
			}
		}
	}
	// The dropped records' input manifests (--explain's) went with them.
	if after := countDir(t, filepath.Join(root, "cache", "manifests", "blobs", "sha256")); after >= manifestsBefore {
		t.Errorf("prune kept all %d input manifests (now %d)", manifestsBefore, after)
	}
	// 8 variants × 2 layers (+ their init layers) are gone.
	if after := countDir(t, filepath.Join(root, "snapshots", "layers")); layersBefore-after < 16 {
		t.Errorf("prune removed %d unpacked layers of %d, want at least 16", layersBefore-after, layersBefore)
	}
	// The survivors run, the container still serves, and a rebuild is all cached.
	if out := mustRun(t, root, "exec", "keeper", "cat", "/g"); out != "variant 9variant 9" {
		t.Errorf("running container after prune: %q", out)
	}
	if out := mustRun(t, root, "run", "--rm", "v:8", "cat", "/g"); out != "variant 8variant 8" {
		t.Errorf("v:8 after prune: %q", out)
	}
	os.WriteFile(filepath.Join(dir, "f"), []byte("variant 9"), 0o644)
	_, stderr, code := run(t, root, "build", "--progress=plain", "-t", "v:9", dir)
	if code != 0 || strings.Count(stderr, "CACHED") != 2 {
		t.Errorf("rebuild of v:9 after prune: exit %d, want its 2 steps CACHED:\n%s", code, stderr)
	}
}

// --keep-storage brings the root under the bound by dropping the least
// recently used build cache; images stay.
func TestCLIPruneKeepStorage(t *testing.T) {
	root := t.TempDir()
	busyboxBase(t, root)
	dir := ctxDir(t, "FROM local/busybox\nCOPY big /big\n", map[string]string{})
	for i := 0; i < 6; i++ {
		b := make([]byte, 2<<20)
		for j := range b {
			b[j] = byte(i*131 + j*7 + j/4099)
		}
		os.WriteFile(filepath.Join(dir, "big"), b, 0o644)
		mustRun(t, root, "build", "-q", "-t", "big:"+strconv.Itoa(i), dir)
		if i < 5 {
			mustRun(t, root, "rmi", "big:"+strconv.Itoa(i))
		}
	}
	before := duBytes(t, root)
	bound := before - 6<<20
	mustRun(t, root, "prune", "--keep-storage", strconv.FormatInt(bound, 10))
	if after := duBytes(t, root); after > bound {
		t.Errorf("du -sb ROOT = %d after prune --keep-storage %d (was %d)", after, bound, before)
	}
	mustRun(t, root, "run", "--rm", "big:5", "true")
}

func duBytes(t *testing.T, root string) int64 {
	t.Helper()
	out, err := exec.Command("du", "-sb", root).Output()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	return n
}

// Prune beside running builds never breaks one: it waits for their leases.
func TestCLIPruneBesideBuilds(t *testing.T) {
	root := t.TempDir()
	busyboxBase(t, root)
	dir := ctxDir(t, "FROM local/busybox\nCOPY f /f\nRUN cat /f > /g\nRUN cat /g\n", map[string]string{"f": "x"})
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 8; i++ {
			os.WriteFile(filepath.Join(dir, "f"), []byte(strconv.Itoa(i)), 0o644)
			if _, stderr, code := run(t, root, "build", "-q", "--no-cache", dir); code != 0 {
				errs <- "build: " + stderr
			}
		}
	}()
	for i := 0; i < 8; i++ {
		if _, stderr, code := run(t, root, "prune", "--all"); code != 0 {
			errs <- "prune: " + stderr
		}
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// fsck finds a flipped byte, a truncated blob, a record naming a missing
// blob and a missing unpacked layer; --repair removes them and the next
// build succeeds.
func TestCLIFsck(t *testing.T) {
	root := t.TempDir()
	busyboxBase(t, root)
	dir := ctxDir(t, "FROM local/busybox\nCOPY a /a\nCOPY b /b\nRUN cat /a /b > /c\n", map[string]string{"a": "A", "b": "B"})
	mustRun(t, root, "build", "-q", "-t", "app:1", dir)
	mustRun(t, root, "run", "--rm", "app:1", "true")
	if out := mustRun(t, root, "system", "fsck"); !strings.Contains(out, "no problems") {
		t.Fatalf("fsck of a sound store: %q", out)
	}
	ids := diffIDs(t, root, "app:1")
	blob := func(d string) string {
		return filepath.Join(root, "oci", "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))
	}
	// A flipped byte in one layer, a truncated other.
	b, _ := os.ReadFile(blob(ids[len(ids)-1]))
	b[len(b)/2] ^= 0xff
	os.Chmod(blob(ids[len(ids)-1]), 0o644)
	os.WriteFile(blob(ids[len(ids)-1]), b, 0o444)
	os.Chmod(blob(ids[len(ids)-2]), 0o644)
	os.Truncate(blob(ids[len(ids)-2]), 100)
	// A record naming a missing blob: a step whose layer is in no image.
	dir2 := ctxDir(t, "FROM local/busybox\nCOPY z /z\n", map[string]string{"z": "Z"})
	mustRun(t, root, "build", "-q", dir2)
	z := diffIDs(t, root, strings.TrimSpace(mustRun(t, root, "build", "-q", dir2)))
	os.Remove(blob(z[len(z)-1]))
	// A missing unpacked layer under another.
	layers, _ := os.ReadDir(filepath.Join(root, "snapshots", "layers"))
	var parentOfOther string
	for _, l := range layers {
		if p, err := os.ReadFile(filepath.Join(root, "snapshots", "layers", l.Name(), "parent")); err == nil && len(p) > 0 {
			parentOfOther = strings.TrimPrefix(string(p), "sha256:")
			break
		}
	}
	os.RemoveAll(filepath.Join(root, "snapshots", "layers", parentOfOther))

	// A record file that is not a record.
	os.WriteFile(filepath.Join(root, "cache", "records", strings.Repeat("ab", 32)+".json"), []byte("{trunc"), 0o644)

	out, _, code := run(t, root, "system", "fsck")
	if code != 1 {
		t.Errorf("fsck of a damaged store: exit %d", code)
	}
	for _, want := range []string{
		"blob " + ids[len(ids)-1] + ": content has digest",
		"blob " + ids[len(ids)-2] + ": content has digest",
		"its layer " + z[len(z)-1] + " is missing",
		"its parent sha256:" + parentOfOther + " is missing",
		"image app:1:",
		"step record sha256:" + strings.Repeat("ab", 32) + ": corrupt",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("fsck output lacks %q:\n%s", want, out)
		}
	}
	mustRun(t, root, "system", "fsck", "--repair")
	if out := mustRun(t, root, "system", "fsck"); !strings.Contains(out, "no problems") {
		t.Errorf("fsck after --repair: %q", out)
	}
	// app:1 is gone (its layers were corrupt); building it again works.
	mustRun(t, root, "build", "-q", "-t", "app:1", dir)
	if out := mustRun(t, root, "run", "--rm", "app:1", "cat", "/c"); out != "AB" {
		t.Errorf("rebuilt app:1: %q", out)
	}
}

// A root with gc.keep-storage in its config.json trims itself after each
// build: built image after image, it stays under the bound, and the newest
// image is kept whole.
func TestCLIAutoGC(t *testing.T) {
	root := t.TempDir()
	busyboxBase(t, root)
	dir := ctxDir(t, "FROM local/busybox\nCOPY big /big\n", map[string]string{})
	base := duBytes(t, root)
	bound := base + 5<<20
	os.WriteFile(filepath.Join(root, "config.json"), []byte(`{"gc": {"keep-storage": "`+strconv.FormatInt(bound, 10)+`"}}`), 0o644)
	for i := 0; i < 6; i++ {
		b := make([]byte, 2<<20)
		for j := range b {
			b[j] = byte(i*131 + j*7 + j/4099)
		}
		os.WriteFile(filepath.Join(dir, "big"), b, 0o644)
		mustRun(t, root, "build", "-q", "-t", "big:latest", dir)
		if used := duBytes(t, root); used > bound {
			t.Fatalf("after build %d the root holds %d bytes, over the gc.keep-storage bound %d", i, used, bound)
		}
	}
	mustRun(t, root, "run", "--rm", "big:latest", "true")
}
