package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/lbuild/lbuild/system"
)

func tarBytes(t *testing.T, name, body string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write([]byte(body))
	tw.Close()
	return buf.Bytes()
}

// ADD extracts local archives: plain tar, gzip, bzip2, xz and zstd. A file
// that is not an archive is copied as it is.
func TestAddArchives(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	plain := tarBytes(t, "in-tar.txt", "tar")
	compress := func(name string, f func(*bytes.Buffer) (interface {
		Write([]byte) (int, error)
		Close() error
	}, error)) {
		var buf bytes.Buffer
		w, err := f(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(tarBytes(t, "in-"+name+".txt", name))
		w.Close()
		os.WriteFile(filepath.Join(dir, "a."+name), buf.Bytes(), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "a.tar"), plain, 0o644)
	compress("gz", func(b *bytes.Buffer) (interface {
		Write([]byte) (int, error)
		Close() error
	}, error) {
		return gzip.NewWriter(b), nil
	})
	compress("xz", func(b *bytes.Buffer) (interface {
		Write([]byte) (int, error)
		Close() error
	}, error) {
		return xz.NewWriter(b)
	})
	compress("zst", func(b *bytes.Buffer) (interface {
		Write([]byte) (int, error)
		Close() error
	}, error) {
		return zstd.NewWriter(b)
	})
	files := []string{"a.tar", "a.gz", "a.xz", "a.zst"}
	if _, err := exec.LookPath("bzip2"); err == nil {
		cmd := exec.Command("bzip2", "-c")
		cmd.Stdin = bytes.NewReader(tarBytes(t, "in-bz2.txt", "bz2"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "a.bz2"), out, 0o644)
		files = append(files, "a.bz2")
	}
	writeFiles(t, dir, map[string]string{"notes.txt": "not an archive"})
	df := "FROM scratch\n"
	for _, f := range files {
		df += "ADD " + f + " /x/\n"
	}
	df += "ADD notes.txt /x/\n"
	res, _ := mustBuild(t, r, dir, df)
	for i, f := range files {
		name := "x/in-" + map[string]string{"a.tar": "tar", "a.gz": "gz", "a.xz": "xz", "a.zst": "zst", "a.bz2": "bz2"}[f] + ".txt"
		if _, ok := find(layerEntries(t, r, res.Steps[i+1].DiffID), name); !ok {
			t.Errorf("ADD %s did not extract %s: %v", f, name, names(layerEntries(t, r, res.Steps[i+1].DiffID)))
		}
	}
	if e, ok := find(layerEntries(t, r, res.Steps[len(files)+1].DiffID), "x/notes.txt"); !ok || e.body != "not an archive" {
		t.Error("a plain file is copied by ADD")
	}
	if _, _, err := tryBuild(r, dir, "FROM scratch\nADD https://example.com/x.tar /x/\n"); err == nil {
		t.Error("ADD of a URL must fail clearly for now")
	}
}

// COPY --from takes files from an image in the store as well as a stage.
func TestCopyFromImage(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	res, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY --from=local/busybox /etc/passwd /etc/group /etc/\n")
	es := layerEntries(t, r, res.Steps[1].DiffID)
	if e, ok := find(es, "etc/passwd"); !ok || !bytes.Contains([]byte(e.body), []byte("app:x:1000")) {
		t.Errorf("COPY --from=image: %v", names(es))
	}
}

// A build whose steps all hit the cache unpacks nothing: with the snapshots
// gone, a cached rebuild does not bring them back.
func TestCachedBuildUnpacksNothing(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a": "a"})
	mustBuild(t, r, dir, "FROM local/busybox\nCOPY a /a\nENV X=1\n")
	layers := filepath.Join(r.Dir, "snapshots", "layers")
	if err := os.RemoveAll(layers); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(layers, 0o755)
	r2, err := system.Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := mustBuild(t, r2, dir, "")
	if got := cachedFlags(res); !equalBools(got, []bool{true, true}) {
		t.Fatalf("cached %v", got)
	}
	if ents, _ := os.ReadDir(layers); len(ents) != 0 {
		t.Errorf("a fully cached build unpacked %d layers", len(ents))
	}
	// A step that runs unpacks exactly the chain it stands on.
	writeFiles(t, dir, map[string]string{"a": "changed"})
	mustBuild(t, r2, dir, "")
	if ents, _ := os.ReadDir(layers); len(ents) != 2 {
		t.Errorf("after one executed step: %d layers unpacked, want 2 (base + the new one)", len(ents))
	}
}

// The same sources copied at different times give the same layer bytes:
// copied directories keep their source mtimes although their children are
// created after them. (The two builds run more than a second apart, the
// resolution of tar mtimes.)
func TestCopyLayerReproducible(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"tree/a": "a", "tree/sub/b": "b", "tree/sub/deeper/c": "c"})
	first, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY tree /tree\n")
	time.Sleep(1100 * time.Millisecond)
	second, _ := mustBuild(t, r, dir, "", func(o *Options) { o.NoCache = true })
	if first.Steps[1].DiffID != second.Steps[1].DiffID {
		t.Errorf("same sources, different layers:\n%v\n%v",
			layerEntries(t, r, first.Steps[1].DiffID), layerEntries(t, r, second.Steps[1].DiffID))
	}
}

// COPY as BuildKit does it: a wildcard matching one file copies it to dest
// itself (COPY target/*.jar app.jar), a wildcard matching nothing is skipped,
// --exclude leaves paths out (matched relative to each source), ADD
// --unpack=false copies an archive as it is, and a file a "!" exception keeps
// inside an excluded directory is copied with its parents.
func TestCopyBuildKitRules(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"target/demo-1.0.jar": "jar", "app/a.go": "a", "app/a.log": "log", "app/sub/b.log": "log2", "app/sub/b.go": "b",
		"sub/skip.txt": "s", "sub/keep.txt": "k", ".dockerignore": "sub\n!sub/keep.txt\n",
	})
	os.WriteFile(filepath.Join(dir, "x.tar"), tarBytes(t, "in.txt", "tar"), 0o644)
	res, _ := mustBuild(t, r, dir, `FROM scratch
COPY target/*.jar app.jar
COPY package*.json yarn.lock* /js/
COPY --exclude=**/*.log app /app/
ADD --unpack=false x.tar /archives/
COPY . /ctx/
`)
	step := func(i int) []entry { return layerEntries(t, r, res.Steps[i].DiffID) }
	if e, ok := find(step(1), "app.jar"); !ok || e.typ != tar.TypeReg || e.body != "jar" {
		t.Errorf("COPY target/*.jar app.jar: %v", names(step(1)))
	}
	// BuildKit's docopy returns before making anything when a wildcard
	// matches nothing (AllowEmptyWildcard): not even the destination.
	if got := strings.Join(names(step(2)), " "); got != "" {
		t.Errorf("wildcards matching nothing: %q", got)
	}
	if got := strings.Join(names(step(3)), " "); got != "app/ app/a.go app/sub/ app/sub/b.go" {
		t.Errorf("--exclude=**/*.log: %q", got)
	}
	if e, ok := find(step(4), "archives/x.tar"); !ok || e.typ != tar.TypeReg {
		t.Errorf("ADD --unpack=false: %v", names(step(4)))
	}
	got := strings.Join(names(step(5)), " ")
	if !strings.Contains(got, "ctx/sub/keep.txt") || strings.Contains(got, "skip.txt") {
		t.Errorf("dockerignore exception inside an excluded dir: %q", got)
	}
	// --exclude is part of the key: the same COPY without it misses.
	res2, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY target/*.jar app.jar\nCOPY package*.json yarn.lock* /js/\nCOPY app /app/\n")
	if res2.Steps[3].Cached {
		t.Error("COPY without --exclude must not hit the cache of COPY --exclude")
	}
}

// Two COPY --from spellings that read the same as text (the JSON form keeps
// "a b" one path) must not share a cache key.
func TestCopyKeyForms(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"d/a b": "space", "d/a": "a", "b": "b"})
	mustBuild(t, r, dir, "FROM scratch AS s\nCOPY d /d\nCOPY b /b\nFROM scratch\nCOPY --from=s [\"/d/a b\", \"/out/\"]\n")
	res, _ := mustBuild(t, r, dir, "FROM scratch AS s\nCOPY d /d\nCOPY b /b\nFROM scratch\nCOPY --from=s /d/a b /out/\n")
	last := res.Steps[len(res.Steps)-1]
	if last.Cached {
		t.Fatal("exec-form and shell-form COPY shared a cache key")
	}
	if got := strings.Join(names(layerEntries(t, r, last.DiffID)), " "); got != "out/ out/a out/b" {
		t.Errorf("COPY --from=s /d/a b /out/: %q", got)
	}
}

// A COPY that fails inside the image names the image path, not lbuild's
// snapshot directories.
func TestCopyErrorNamesImagePath(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"d/x": "x", "e/x/y": "y"})
	_, _, err := tryBuild(r, dir, "FROM scratch\nCOPY e /t/\nCOPY d /t/\n")
	if err == nil || !strings.Contains(err.Error(), "replace /t/x: a directory cannot be replaced by a file") {
		t.Fatalf("copying a file over a directory: %v", err)
	}
	if strings.Contains(err.Error(), r.Dir) || strings.Contains(err.Error(), "snapshots") {
		t.Errorf("error leaks the store path: %v", err)
	}
}

// COPY --from=stage keys on the checksum of what it copies; that checksum is
// remembered by the stage's chain ID, so a fully cached rebuild still
// unpacks nothing.
func TestCachedCopyFromStageUnpacksNothing(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a": "a"})
	mustBuild(t, r, dir, "FROM scratch AS s\nCOPY a /a\nFROM scratch\nCOPY --from=s /a /b\n")
	layers := filepath.Join(r.Dir, "snapshots", "layers")
	if err := os.RemoveAll(layers); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(layers, 0o755)
	r2, err := system.Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := mustBuild(t, r2, dir, "")
	if got := cachedFlags(res); !equalBools(got, []bool{true, true}) {
		t.Fatalf("cached %v", got)
	}
	if ents, _ := os.ReadDir(layers); len(ents) != 0 {
		t.Errorf("a fully cached build unpacked %d layers", len(ents))
	}
}
