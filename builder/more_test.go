package builder

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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
