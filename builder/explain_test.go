package builder

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/system"
)

func explain(o *Options) { o.Explain = true }

// explainBuild builds with Explain and returns the explanations by step text
// (FROM steps left out) and the progress output.
func explainBuild(t *testing.T, r *system.Root, dir, df string, opts ...func(*Options)) (map[string]*Explanation, *Result, string) {
	t.Helper()
	res, out := mustBuild(t, r, dir, df, append([]func(*Options){explain}, opts...)...)
	m := map[string]*Explanation{}
	for _, s := range res.Steps {
		if strings.HasPrefix(s.Text, "FROM ") {
			continue
		}
		if s.Cached != (s.Explain == nil) {
			t.Errorf("step %q: cached %v with explanation %+v", s.Text, s.Cached, s.Explain)
		}
		m[s.Text] = s.Explain
	}
	return m, res, out
}

func stepID(t *testing.T, res *Result, text string) int {
	t.Helper()
	for _, s := range res.Steps {
		if s.Text == text {
			return s.ID
		}
	}
	t.Fatalf("no step %q", text)
	return 0
}

func wantReason(t *testing.T, x map[string]*Explanation, text, reason string) *Explanation {
	t.Helper()
	e, ok := x[text]
	switch {
	case !ok:
		t.Fatalf("no step %q in %v", text, x)
	case reason == "" && e != nil:
		t.Errorf("%s: want cached, got miss %s", text, e)
	case reason != "" && e == nil:
		t.Errorf("%s: want miss %s, got cached", text, reason)
	case reason != "" && e.Reason != reason:
		t.Errorf("%s: reason %s, want %s (%s)", text, e.Reason, reason, e)
	}
	return e
}

func TestExplainFilesAndParent(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"src/a": "a", "src/b": "b", "src/c": "c", "src/d/e": "e", "other": "o"})
	df := "FROM scratch\nCOPY src /src\nLABEL x=y\nCOPY other /other\n"
	x, _, out := explainBuild(t, r, dir, df)
	for text := range x {
		wantReason(t, x, text, ReasonNew)
	}
	if !strings.Contains(out, "#2 MISS new\n") {
		t.Errorf("first build's progress lacks the MISS line:\n%s", out)
	}

	writeFiles(t, dir, map[string]string{"src/a": "A", "src/new": "n"})
	os.Remove(filepath.Join(dir, "src/c"))
	x, res, out := explainBuild(t, r, dir, "")
	e := wantReason(t, x, "COPY src /src", ReasonFiles)
	want := []cache.FileChange{{Path: "src/a", Change: "modified"}, {Path: "src/c", Change: "removed"}, {Path: "src/new", Change: "added"}}
	if !reflect.DeepEqual(e.Files, want) {
		t.Errorf("files %+v, want %+v", e.Files, want)
	}
	if !strings.Contains(out, "#2 MISS files: src/a modified, src/c removed, src/new added\n") {
		t.Errorf("progress:\n%s", out)
	}
	// Both stand on the COPY's filesystem (a LABEL is no parent of a
	// COPY: metadata steps do not chain).
	for _, text := range []string{`LABEL x="y"`, "COPY other /other"} {
		e := wantReason(t, x, text, ReasonParent)
		if want := stepID(t, res, "COPY src /src"); e.ParentStep != want {
			t.Errorf("%s: parent step %d, want %d", text, e.ParentStep, want)
		}
	}
	if !strings.Contains(out, "#3 MISS parent: #2 changed\n") || !strings.Contains(out, "#4 MISS parent: #2 changed\n") {
		t.Errorf("progress:\n%s", out)
	}

	// A mode-only change; and more changes than one line names.
	os.Chmod(filepath.Join(dir, "src/b"), 0o600)
	writeFiles(t, dir, map[string]string{"src/n1": "1", "src/n2": "2", "src/n3": "3"})
	x, _, out = explainBuild(t, r, dir, "")
	e = wantReason(t, x, "COPY src /src", ReasonFiles)
	want = []cache.FileChange{{Path: "src/b", Change: "mode"}, {Path: "src/n1", Change: "added"}, {Path: "src/n2", Change: "added"}, {Path: "src/n3", Change: "added"}}
	if !reflect.DeepEqual(e.Files, want) {
		t.Errorf("files %+v, want %+v", e.Files, want)
	}
	if !strings.Contains(out, "#2 MISS files: src/b mode, src/n1 added, src/n2 added (+1 more)\n") {
		t.Errorf("progress:\n%s", out)
	}

	// Unchanged: all cached, no MISS line.
	x, _, out = explainBuild(t, r, dir, "")
	for text := range x {
		wantReason(t, x, text, "")
	}
	if strings.Contains(out, "MISS") {
		t.Errorf("cached build explains:\n%s", out)
	}
}

func TestExplainReorderedCopyAndNoCache(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a": "a", "b": "b"})
	explainBuild(t, r, dir, "FROM scratch\nCOPY a /a\nCOPY b /b\n")
	x, _, out := explainBuild(t, r, dir, "FROM scratch\nCOPY b /b\nCOPY a /a\n")
	if e := wantReason(t, x, "COPY b /b", ReasonInstruction); e != nil && e.Detail != `was "COPY a /a"` {
		t.Errorf("detail %q", e.Detail)
	}
	wantReason(t, x, "COPY a /a", ReasonInstruction)
	if !strings.Contains(out, `#2 MISS instruction: was "COPY a /a"`) {
		t.Errorf("progress:\n%s", out)
	}
	x, _, _ = explainBuild(t, r, dir, "", func(o *Options) { o.NoCache = true })
	wantReason(t, x, "COPY b /b", ReasonNoCache)
	wantReason(t, x, "COPY a /a", ReasonNoCache)
}

func TestExplainArg(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"f": "f", "g": "g"})
	df := "FROM scratch\nARG V=1\nARG OTHER=1\nARG API_TOKEN=hunter2\nCOPY f /f\nLABEL v=$V\nLABEL o=$OTHER\nCOPY g /g\nLABEL t=$API_TOKEN\n"
	explainBuild(t, r, dir, df)
	x, _, out := explainBuild(t, r, dir, "", func(o *Options) {
		o.BuildArgs = map[string]string{"V": "2", "API_TOKEN": "swordfish"}
	})
	wantReason(t, x, "COPY f /f", "")
	e := wantReason(t, x, `LABEL v="2"`, ReasonArg)
	if want := []Change{{Name: "V", Old: "1", New: "2"}}; !reflect.DeepEqual(e.Args, want) {
		t.Errorf("args %+v, want %+v", e.Args, want)
	}
	// A metadata change above a step is no miss at all for it (BuildKit:
	// metadata never enters an op's cache key).
	wantReason(t, x, `LABEL o="1"`, "")
	wantReason(t, x, "COPY g /g", "")
	e = wantReason(t, x, `LABEL t="swordfish"`, ReasonArg)
	if want := []Change{{Name: "API_TOKEN", Secret: true}}; !reflect.DeepEqual(e.Args, want) {
		t.Errorf("args %+v, want %+v", e.Args, want)
	}
	if !strings.Contains(out, "MISS arg: V 1 → 2\n") || !strings.Contains(out, "MISS arg: API_TOKEN changed (value not shown)\n") {
		t.Errorf("progress:\n%s", out)
	}
	// The manifests keep no secret-looking value given as a build-arg (the
	// default is in the Dockerfile's text).
	filepath.Walk(r.ExplainDir(), func(p string, fi os.FileInfo, err error) error {
		if b, _ := os.ReadFile(p); err == nil && !fi.IsDir() && strings.Contains(string(b), "swordfish") {
			t.Errorf("%s holds the secret value: %s", p, b)
		}
		return nil
	})
}

func TestExplainBase(t *testing.T) {
	r := openRoot(t)
	base := t.TempDir()
	writeFiles(t, base, map[string]string{"x": "1"})
	mustBuild(t, r, base, "FROM scratch\nCOPY x /x\n", func(o *Options) { o.Tags = []string{"local/base"} })
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"f": "f"})
	explainBuild(t, r, dir, "FROM local/base\nCOPY f /f\nLABEL a=b\n")
	writeFiles(t, base, map[string]string{"x": "2"})
	mustBuild(t, r, base, "", func(o *Options) { o.Tags = []string{"local/base"} })
	x, res, _ := explainBuild(t, r, dir, "")
	e := wantReason(t, x, "COPY f /f", ReasonBase)
	img, err := r.Store.Resolve("local/base")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.Detail, short(img.ID.String())+" (was sha256:") {
		t.Errorf("detail %q, want the new image %s", e.Detail, img.ID)
	}
	if e := wantReason(t, x, `LABEL a="b"`, ReasonParent); e.ParentStep != stepID(t, res, "COPY f /f") {
		t.Errorf("parent step %d", e.ParentStep)
	}
}

func TestExplainEnvLabel(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	explainBuild(t, r, dir, "FROM scratch\nENV A=1\nLABEL a=$A\n")
	x, _, _ := explainBuild(t, r, dir, "FROM scratch\nENV A=2\nLABEL a=$A\n")
	wantReason(t, x, "ENV A=2", ReasonInstruction)
	e := wantReason(t, x, `LABEL a="2"`, ReasonEnv)
	if want := []Change{{Name: "A", Old: "1", New: "2"}}; !reflect.DeepEqual(e.Env, want) {
		t.Errorf("env %+v, want %+v", e.Env, want)
	}
}

func TestExplainRun(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"f": "f"})
	df := "FROM local/busybox\nARG V=1\nARG DB_PASSWORD=hunter2\nENV E=1\nRUN echo one > /one\nRUN echo two > /two\nCOPY f /f\n"
	explainBuild(t, r, dir, df)

	// An edited RUN line; the steps after it stand on it.
	x, res, out := explainBuild(t, r, dir, strings.Replace(df, "echo one", "echo uno", 1))
	wantReason(t, x, "ENV E=1", "")
	e := wantReason(t, x, "RUN /bin/sh -c echo uno > /one", ReasonInstruction)
	if e != nil && e.Detail != `was "RUN echo one > /one"` {
		t.Errorf("detail %q", e.Detail)
	}
	e = wantReason(t, x, "RUN /bin/sh -c echo two > /two", ReasonParent)
	if want := stepID(t, res, "RUN /bin/sh -c echo uno > /one"); e.ParentStep != want {
		t.Errorf("parent step %d, want %d", e.ParentStep, want)
	}
	wantReason(t, x, "COPY f /f", ReasonParent)
	if !strings.Contains(out, `MISS instruction: was "RUN echo one > /one"`) {
		t.Errorf("progress:\n%s", out)
	}

	// A build-arg: every RUN sees it; the COPY does not use it.
	args := func(o *Options) { o.BuildArgs = map[string]string{"V": "2", "DB_PASSWORD": "swordfish"} }
	x, _, out = explainBuild(t, r, dir, "", args)
	for _, text := range []string{"RUN /bin/sh -c echo uno > /one", "RUN /bin/sh -c echo two > /two"} {
		e := wantReason(t, x, text, ReasonArg)
		want := []Change{{Name: "DB_PASSWORD", Secret: true}, {Name: "V", Old: "1", New: "2"}}
		if e != nil && !reflect.DeepEqual(e.Args, want) {
			t.Errorf("%s: args %+v, want %+v", text, e.Args, want)
		}
	}
	wantReason(t, x, "COPY f /f", ReasonParent)
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "MISS") && (strings.Contains(l, "hunter2") || strings.Contains(l, "swordfish")) {
			t.Errorf("explanation shows a secret: %s", l)
		}
	}

	// An ENV change: the ENV's text, then the RUNs' environment.
	df2 := strings.Replace(strings.Replace(df, "echo one", "echo uno", 1), "ENV E=1", "ENV E=2", 1)
	x, _, _ = explainBuild(t, r, dir, df2, args)
	wantReason(t, x, "ENV E=2", ReasonInstruction)
	e = wantReason(t, x, "RUN /bin/sh -c echo uno > /one", ReasonEnv)
	if want := []Change{{Name: "E", Old: "1", New: "2"}}; e != nil && !reflect.DeepEqual(e.Env, want) {
		t.Errorf("env %+v, want %+v", e.Env, want)
	}

	// --network: flags.
	x, _, _ = explainBuild(t, r, dir, "", args, func(o *Options) { o.Network = "none" })
	wantReason(t, x, "RUN /bin/sh -c echo uno > /one", ReasonFlags)
}

// Records written before manifests were kept explain as new, and say so.
func TestExplainRecordWithoutManifest(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a": "a"})
	explainBuild(t, r, dir, "FROM scratch\nCOPY a /a\n")
	r.Records.Walk(func(rec *cache.Record) error {
		rec.Manifest = ""
		return r.Records.Put(rec)
	})
	writeFiles(t, dir, map[string]string{"a": "A"})
	x, _, _ := explainBuild(t, r, dir, "")
	if e := wantReason(t, x, "COPY a /a", ReasonNew); e != nil && e.Detail != "its neighbour was recorded without a manifest" {
		t.Errorf("detail %q", e.Detail)
	}
}

// COPY --from a stage that changed stands on that stage's last step.
func TestExplainCopyFromStage(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a": "a", "b": "b"})
	df := "FROM scratch AS build\nCOPY a /a\n\nFROM scratch\nCOPY b /b\nCOPY --from=build /a /a\n"
	explainBuild(t, r, dir, df)
	writeFiles(t, dir, map[string]string{"a": "A"})
	x, res, out := explainBuild(t, r, dir, "")
	wantReason(t, x, "COPY a /a", ReasonFiles)
	wantReason(t, x, "COPY b /b", "")
	e := wantReason(t, x, "COPY --from=build /a /a", ReasonParent)
	if want := stepID(t, res, "COPY a /a"); e != nil && e.ParentStep != want {
		t.Errorf("parent step %d, want %d:\n%s", e.ParentStep, want, out)
	}
	for _, s := range res.Steps {
		if s.Text == "COPY a /a" && s.Stage != "build" {
			t.Errorf("stage %q", s.Stage)
		}
	}
}

// A USER change above a RUN is no parent of it (metadata steps do not chain):
// the RUN says it runs as another user; a COPY after it, on the RUN's new
// layer, names the RUN.
func TestExplainUserChange(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"f": "f"})
	df := "FROM local/busybox\nCOPY f /f\nUSER root\nRUN id -u\nCOPY f /g\n"
	explainBuild(t, r, dir, df)
	x, res, out := explainBuild(t, r, dir, strings.Replace(df, "USER root", "USER app", 1))
	wantReason(t, x, "COPY f /f", "")
	if e := wantReason(t, x, "RUN /bin/sh -c id -u", ReasonConfig); e != nil && e.Detail != "user app (was root)" {
		t.Errorf("detail %q\n%s", e.Detail, out)
	}
	e := wantReason(t, x, "COPY f /g", ReasonParent)
	if want := stepID(t, res, "RUN /bin/sh -c id -u"); e != nil && e.ParentStep != want {
		t.Errorf("parent step %d, want %d", e.ParentStep, want)
	}
}
