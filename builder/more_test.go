package builder

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// --target builds the named stage and only the stages it needs.
func TestTargetStage(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a": "a", "b": "b"})
	df := "FROM scratch AS one\nCOPY a /a\nFROM scratch AS unused\nCOPY b /b\nFROM one AS two\nCOPY b /b2\nFROM scratch\nCOPY nope /x\n"
	res, _ := mustBuild(t, r, dir, df, func(o *Options) { o.Target = "two" })
	var stages []string
	for _, s := range res.Steps {
		stages = append(stages, s.Stage)
	}
	if got := strings.Join(stages, " "); got != "one one two two" {
		t.Errorf("--target two built stages %q, want only one and two", got)
	}
	if n := len(res.Image.Config.RootFS.DiffIDs); n != 2 {
		t.Errorf("target image has %d layers, want 2", n)
	}
	if _, _, err := tryBuild(r, dir, "", func(o *Options) { o.Target = "three" }); err == nil || !strings.Contains(err.Error(), `target stage "three" not found`) {
		t.Errorf("unknown target: %v", err)
	}
}

// Wildcards select matching files (each copied under its name) and
// directories (their contents); <Dockerfile>.dockerignore beside the
// Dockerfile takes precedence over the context's .dockerignore.
func TestWildcardsAndDockerfileIgnore(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"web/a.html": "a", "web/b.html": "b", "web/c.css": "c", "conf.d/x.conf": "x", "conf.e/y.conf": "y",
		".dockerignore": "web/b.html\n", "build/Dockerfile.dockerignore": "web/a.html\n",
	})
	res, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY web/*.html /site/\nCOPY conf.? /etc/conf/\n")
	got := strings.Join(names(layerEntries(t, r, res.Steps[1].DiffID)), " ")
	if got != "site/ site/a.html" {
		t.Errorf("COPY web/*.html with .dockerignore web/b.html: %s", got)
	}
	if got := strings.Join(names(layerEntries(t, r, res.Steps[2].DiffID)), " "); got != "etc/ etc/conf/ etc/conf/x.conf etc/conf/y.conf" {
		t.Errorf("COPY conf.? : %s", got)
	}
	df := filepath.Join(dir, "build", "Dockerfile")
	os.WriteFile(df, []byte("FROM scratch\nCOPY web/*.html /site/\n"), 0o644)
	res, _ = mustBuild(t, r, dir, "", func(o *Options) { o.Dockerfile = df })
	if got := strings.Join(names(layerEntries(t, r, res.Steps[1].DiffID)), " "); got != "site/ site/b.html" {
		t.Errorf("with Dockerfile.dockerignore (web/a.html) replacing .dockerignore: %s", got)
	}
}

// RUN output streams into the progress view as BuildKit's plain lines; a
// RUN sees only its rootfs (and mounts), never the host's files.
func TestRunOutputAndIsolation(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	marker := filepath.Join(t.TempDir(), "host-marker")
	os.WriteFile(marker, []byte("host"), 0o644)
	_, out := mustBuild(t, r, dir, "FROM local/busybox\nRUN echo out-line && echo err-line >&2 && "+
		"(test ! -e "+marker+" && echo host-file-invisible) && touch /tmp/written-inside\n")
	for _, re := range []string{`#2 \d+\.\d{3} out-line\n`, `#2 \d+\.\d{3} err-line\n`, `#2 \d+\.\d{3} host-file-invisible\n`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("progress lacks %s:\n%s", re, out)
		}
	}
	if _, err := os.Stat("/tmp/written-inside"); err == nil {
		t.Error("a RUN wrote to the host's /tmp")
	}
}

// RUN --mount=type=bind,from=STAGE reads another stage's files (read-only),
// and is keyed by that stage.
func TestRunBindFromStage(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"v": "1"})
	df := "FROM scratch AS data\nCOPY v /v\nFROM local/busybox\nRUN --mount=type=bind,from=data,target=/data cat /data/v > /got && (touch /data/x 2>/dev/null && echo rw || echo ro) >> /got\n"
	res, _ := mustBuild(t, r, dir, df)
	last := res.Steps[len(res.Steps)-1]
	if e, _ := find(layerEntries(t, r, last.DiffID), "got"); e.body != "1ro\n" {
		t.Errorf("bind from stage: %q", e.body)
	}
	writeFiles(t, dir, map[string]string{"v": "2"})
	res, _ = mustBuild(t, r, dir, "")
	last = res.Steps[len(res.Steps)-1]
	if last.Cached {
		t.Error("a changed source stage must miss the RUN that binds it")
	}
	if e, _ := find(layerEntries(t, r, last.DiffID), "got"); e.body != "2ro\n" {
		t.Errorf("bind from stage after change: %q", e.body)
	}
}

// BuildKit's platform ARGs, ARGs inherited from a base stage, heredoc
// expansion in COPY, and COPY --chown=<uid> meaning uid:uid.
func TestBuildKitArgSemantics(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	res, _ := mustBuild(t, r, dir, `FROM --platform=$BUILDPLATFORM local/busybox AS a
ARG V=inherited
ARG TARGETOS TARGETARCH
RUN echo "[$TARGETOS][$TARGETARCH][$V]" > /args
FROM a
RUN echo "[$V]" > /child
ENV NAME=world
COPY <<EOF /hello.txt
hello $NAME
EOF
COPY <<'EOF' /literal.txt
hello $NAME
EOF
COPY --chown=1000 <<EOF /owned
x
EOF
`)
	want := map[string]string{"args": "[linux][" + runtime.GOARCH + "][inherited]\n", "child": "[inherited]\n", "hello.txt": "hello world\n", "literal.txt": "hello $NAME\n"}
	seen := map[string]bool{}
	for _, s := range res.Steps {
		if s.DiffID == "" {
			continue
		}
		for _, e := range layerEntries(t, r, s.DiffID) {
			if w, ok := want[e.name]; ok {
				seen[e.name] = true
				if e.body != w {
					t.Errorf("%s = %q, want %q", e.name, e.body, w)
				}
			}
			if e.name == "owned" && (e.uid != 1000 || e.gid != 1000) {
				t.Errorf("--chown=1000 gave %d:%d, want 1000:1000", e.uid, e.gid)
			}
		}
	}
	if len(seen) != len(want) {
		t.Errorf("files found: %v", seen)
	}
}

// A copied symlink keeps its own mtime, so two uncached builds of the same
// sources give the same layer.
func TestCopySymlinkReproducible(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"d/f": "f"})
	os.Symlink("f", filepath.Join(dir, "d", "link"))
	first, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY d /app/\n")
	time.Sleep(1100 * time.Millisecond)
	second, _ := mustBuild(t, r, dir, "", func(o *Options) { o.NoCache = true })
	if first.Steps[1].DiffID != second.Steps[1].DiffID {
		t.Error("a copied symlink made the layer differ between builds")
	}
}

// COPY --chown=<uid> is uid:uid even when /etc/passwd gives that uid another
// primary group (BuildKit's UserOpt_ByID); a name takes its primary group.
func TestChownNumericGID(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"passwd": "u:x:2000:100:u:/:/bin/sh\n", "f": "f"})
	res, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY passwd /etc/passwd\nCOPY --chown=2000 f /by-id\nCOPY --chown=u f /by-name\n")
	if e, _ := find(layerEntries(t, r, res.Steps[2].DiffID), "by-id"); e.uid != 2000 || e.gid != 2000 {
		t.Errorf("--chown=2000: %d:%d, want 2000:2000", e.uid, e.gid)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[3].DiffID), "by-name"); e.uid != 2000 || e.gid != 100 {
		t.Errorf("--chown=u: %d:%d, want 2000:100", e.uid, e.gid)
	}
}
