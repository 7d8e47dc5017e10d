package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/builder/buildertest"
	"github.com/lbuild/lbuild/builder/progress"
	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/parser"
	"github.com/lbuild/lbuild/system"
)

func openRoot(t testing.TB) *system.Root {
	t.Helper()
	r, err := system.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return r
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

var busyboxOnce sync.Map // root dir -> struct{}

// withBusybox builds the busybox base as local/busybox in r.
func withBusybox(t testing.TB, r *system.Root) {
	t.Helper()
	if _, err := os.Stat(buildertest.BusyboxPath); err != nil {
		t.Skip("busybox-static not installed")
	}
	if _, done := busyboxOnce.Load(r.Dir); done {
		return
	}
	dir := t.TempDir()
	if err := buildertest.BusyboxContext(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), r, Options{ContextDir: dir, Tags: []string{"local/busybox"}}); err != nil {
		t.Fatal(err)
	}
	busyboxOnce.Store(r.Dir, struct{}{})
}

func mustBuild(t testing.TB, r *system.Root, dir, dockerfile string, opts ...func(*Options)) (*Result, string) {
	t.Helper()
	res, out, err := tryBuild(r, dir, dockerfile, opts...)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return res, out
}

func tryBuild(r *system.Root, dir, dockerfile string, opts ...func(*Options)) (*Result, string, error) {
	if dockerfile != "" {
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
			return nil, "", err
		}
	}
	var out bytes.Buffer
	o := Options{ContextDir: dir, Progress: progress.NewPlain(&out)}
	for _, f := range opts {
		f(&o)
	}
	res, err := Build(context.Background(), r, o)
	return res, out.String(), err
}

// cached lists, per step after FROM, whether it was cached.
func cachedFlags(res *Result) []bool {
	var out []bool
	for _, s := range res.Steps {
		if strings.HasPrefix(s.Text, "FROM ") {
			continue
		}
		out = append(out, s.Cached)
	}
	return out
}

type entry struct {
	name     string
	mode     int64
	uid, gid int
	typ      byte
	link     string
	body     string
}

// layerEntries reads the layer tar of diffID from the store.
func layerEntries(t testing.TB, r *system.Root, diffID string) []entry {
	t.Helper()
	var out []entry
	walkLayer(t, r, diffID, func(hd *tar.Header, body string) {
		out = append(out, entry{hd.Name, hd.Mode, hd.Uid, hd.Gid, hd.Typeflag, hd.Linkname, body})
	})
	return out
}

// walkLayer calls fn with each entry of the layer tar of diffID in the store.
func walkLayer(t testing.TB, r *system.Root, diffID string, fn func(hd *tar.Header, body string)) {
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
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("%s: %v", hd.Name, err)
		}
		fn(hd, string(body))
	}
}

func names(es []entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.name)
	}
	return out
}

func find(es []entry, name string) (entry, bool) {
	for _, e := range es {
		if e.name == name {
			return e, true
		}
	}
	return entry{}, false
}

func targz(t testing.TB, files map[string]string) string {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	var keys []string
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		tw.WriteHeader(&tar.Header{Name: k, Mode: 0o600, Size: int64(len(files[k])), Typeflag: tar.TypeReg, ModTime: time.Unix(1600000000, 0)})
		tw.Write([]byte(files[k]))
	}
	tw.Close()
	zw.Close()
	return buf.String()
}

const multiStage = `ARG VERSION=1.0
FROM scratch AS files
COPY a.txt /a.txt
COPY dir /opt/dir/
ADD app.tar.gz /srv/
COPY . /ctx/

FROM local/busybox
ARG VERSION
LABEL version=$VERSION maintainer="lbuild tests"
ENV APP_HOME=/app
WORKDIR $APP_HOME
COPY --from=files /opt/dir ./dir
COPY --chown=app:staff --chmod=640 a.txt secret.txt
EXPOSE 8080 53/udp
USER app
VOLUME /data
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s CMD wget -q -O- localhost:8080
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["httpd"]
CMD ["-f", "-p", "8080"]
ONBUILD COPY a.txt /onbuild.txt
`

func multiStageContext(t *testing.T) string {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.txt":         "alpha\n",
		"dir/b.txt":     "beta\n",
		"dir/sub/c.txt": "gamma\n",
		"ignored.log":   "noise\n",
		".dockerignore": "*.log\n",
		"app.tar.gz":    targz(t, map[string]string{"bin/app": "#!/bin/sh\n", "etc/app.conf": "x=1\n"}),
	})
	return dir
}

func TestMultiStageBuild(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	dir := multiStageContext(t)
	res, out := mustBuild(t, r, dir, multiStage, func(o *Options) { o.Tags = []string{"app:1"} })
	img := res.Image
	c := img.Config.Config

	if v, _ := imagecfg.LookupEnv(c.Env, "APP_HOME"); v != "/app" {
		t.Errorf("env %v", c.Env)
	}
	if v, _ := imagecfg.LookupEnv(c.Env, "PATH"); v != "/usr/sbin:/usr/bin:/sbin:/bin" {
		t.Errorf("PATH from base lost: %v", c.Env)
	}
	if _, ok := imagecfg.LookupEnv(c.Env, "VERSION"); ok {
		t.Error("an ARG must not land in the image's env")
	}
	checks := map[string][2]any{
		"workdir":     {c.WorkingDir, "/app"},
		"user":        {c.User, "app"},
		"label":       {c.Labels["version"], "1.0"},
		"label2":      {c.Labels["maintainer"], "lbuild tests"},
		"stopsignal":  {c.StopSignal, "SIGQUIT"},
		"entrypoint":  {strings.Join(c.Entrypoint, " "), "httpd"},
		"cmd":         {strings.Join(c.Cmd, " "), "-f -p 8080"},
		"shell":       {strings.Join(c.Shell, " "), "/bin/sh -ec"},
		"onbuild":     {strings.Join(c.OnBuild, ";"), "COPY a.txt /onbuild.txt"},
		"healthcheck": {strings.Join(c.Healthcheck.Test, " "), "CMD-SHELL wget -q -O- localhost:8080"},
		"interval":    {c.Healthcheck.Interval, 5 * time.Second},
		"os":          {img.Config.OS, "linux"},
	}
	for name, kv := range checks {
		if kv[0] != kv[1] {
			t.Errorf("%s: got %v, want %v", name, kv[0], kv[1])
		}
	}
	if _, ok := c.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("ports %v", c.ExposedPorts)
	}
	if _, ok := c.ExposedPorts["53/udp"]; !ok {
		t.Errorf("ports %v", c.ExposedPorts)
	}
	if _, ok := c.Volumes["/data"]; !ok {
		t.Errorf("volumes %v", c.Volumes)
	}
	if img.ID.String() != "sha256:"+img.ID.Hex || len(img.Refs) != 1 || img.Refs[0] != "app:1" {
		t.Errorf("image %v refs %v", img.ID, img.Refs)
	}

	// History: busybox base (COPY, ENV, CMD) + 15 steps of the final stage;
	// layers for COPY and WORKDIR (which makes its directory, as in BuildKit).
	h := img.Config.History
	var withLayer []string
	for _, e := range h {
		if !e.EmptyLayer {
			withLayer = append(withLayer, e.CreatedBy)
		}
	}
	wantLayers := []string{"COPY rootfs/ /", "WORKDIR /app", "COPY --from=files /opt/dir ./dir", "COPY --chown=app:staff --chmod=640 a.txt secret.txt"}
	if strings.Join(withLayer, "|") != strings.Join(wantLayers, "|") {
		t.Errorf("history with layers: %q", withLayer)
	}
	if len(h) != 3+15 || len(img.Config.RootFS.DiffIDs) != 4 || len(img.Layers) != 4 {
		t.Errorf("history %d entries, %d diff IDs, %d layers", len(h), len(img.Config.RootFS.DiffIDs), len(img.Layers))
	}
	if h[len(h)-1].CreatedBy != "ONBUILD COPY a.txt /onbuild.txt" || h[3].CreatedBy != "ARG VERSION=1.0" || h[5].CreatedBy != "ENV APP_HOME=/app" {
		t.Errorf("history: %q / %q / %q", h[3].CreatedBy, h[5].CreatedBy, h[len(h)-1].CreatedBy)
	}
	if img.Config.Created != h[len(h)-1].Created {
		t.Error("config created must be the last step's")
	}

	// Layer contents.
	ds := img.Config.RootFS.DiffIDs
	if got := strings.Join(names(layerEntries(t, r, ds[1].String())), " "); got != "app/" {
		t.Errorf("WORKDIR layer: %s", got)
	}
	fromLayer := layerEntries(t, r, ds[2].String())
	if got := strings.Join(names(fromLayer), " "); got != "app/ app/dir/ app/dir/b.txt app/dir/sub/ app/dir/sub/c.txt" {
		t.Errorf("COPY --from layer: %s", got)
	}
	sec := layerEntries(t, r, ds[3].String())
	e, ok := find(sec, "app/secret.txt")
	if !ok || e.uid != 1000 || e.gid != 50 || e.mode&0o7777 != 0o640 || e.body != "alpha\n" {
		t.Errorf("chown/chmod layer: %+v (all: %v)", e, names(sec))
	}

	// The files stage: ADD extracted the archive; .dockerignore kept ignored.log out.
	var filesStage []StepResult
	for _, s := range res.Steps {
		if s.Stage == "files" {
			filesStage = append(filesStage, s)
		}
	}
	if len(filesStage) != 5 {
		t.Fatalf("files stage steps: %+v", filesStage)
	}
	add := layerEntries(t, r, filesStage[3].DiffID)
	if e, ok := find(add, "srv/bin/app"); !ok || e.body != "#!/bin/sh\n" || e.mode&0o777 != 0o600 {
		t.Errorf("ADD layer: %v", names(add))
	}
	ctx := names(layerEntries(t, r, filesStage[4].DiffID))
	joined := strings.Join(ctx, " ")
	if strings.Contains(joined, "ignored.log") || !strings.Contains(joined, "ctx/a.txt") || !strings.Contains(joined, "ctx/app.tar.gz") {
		t.Errorf("COPY . layer: %v", ctx)
	}
	if !strings.Contains(out, "[files 2/5] COPY a.txt /a.txt") || !strings.Contains(out, "DONE") {
		t.Errorf("progress:\n%s", out)
	}

	// A rebuild is all CACHED with the same image ID.
	res2, out2 := mustBuild(t, r, dir, "", func(o *Options) { o.Tags = []string{"app:1"} })
	for _, s := range res2.Steps {
		if !s.Cached {
			t.Errorf("rebuild ran %q", s.Text)
		}
	}
	if res2.Image.ID != img.ID {
		t.Errorf("rebuild changed the image ID %s -> %s", img.ID, res2.Image.ID)
	}
	if strings.Count(out2, "CACHED") != 15+4 {
		t.Errorf("rebuild progress:\n%s", out2)
	}

	// ONBUILD triggers run when a later FROM uses the image, and are not inherited.
	dir2 := t.TempDir()
	writeFiles(t, dir2, map[string]string{"a.txt": "from child\n"})
	child, _ := mustBuild(t, r, dir2, "FROM app:1\n")
	if len(child.Image.Config.Config.OnBuild) != 0 {
		t.Error("ONBUILD triggers must not be inherited")
	}
	last := child.Image.Config.RootFS.DiffIDs[len(child.Image.Config.RootFS.DiffIDs)-1]
	if e, ok := find(layerEntries(t, r, last.String()), "onbuild.txt"); !ok || e.body != "from child\n" {
		t.Error("ONBUILD COPY did not run in the child build")
	}
}

const chainDF = `FROM local/busybox
COPY a.txt /a.txt
COPY b.txt /b.txt
COPY dir /dir
ENV X=1
`

func TestCacheChain(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.txt": "a", "b.txt": "b", "dir/c.txt": "c", "dir/d/e.txt": "e"})

	first, _ := mustBuild(t, r, dir, chainDF)
	if got := cachedFlags(first); !equalBools(got, []bool{false, false, false, false}) {
		t.Fatalf("first build cached %v", got)
	}
	again, _ := mustBuild(t, r, dir, "")
	if got := cachedFlags(again); !equalBools(got, []bool{true, true, true, true}) || again.Image.ID != first.Image.ID {
		t.Fatalf("rebuild: cached %v, ids %s %s", got, first.Image.ID, again.Image.ID)
	}

	// Changing one copied file rebuilds from that step on, nothing before.
	writeFiles(t, dir, map[string]string{"b.txt": "B"})
	changed, _ := mustBuild(t, r, dir, "")
	if got := cachedFlags(changed); !equalBools(got, []bool{true, false, false, false}) {
		t.Fatalf("after changing b.txt: cached %v", got)
	}
	if changed.Steps[2].DiffID == first.Steps[2].DiffID {
		t.Error("changed content must give a new layer")
	}
	if changed.Steps[3].DiffID != first.Steps[3].DiffID || changed.Steps[3].ChainID == first.Steps[3].ChainID {
		t.Error("the unchanged dir layer keeps its diff ID on a new chain")
	}

	// Touching every file (mtime only) keeps every step cached.
	future := time.Now().Add(time.Hour)
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		return os.Chtimes(p, future, future)
	})
	touched, _ := mustBuild(t, r, dir, "")
	if got := cachedFlags(touched); !equalBools(got, []bool{true, true, true, true}) || touched.Image.ID != changed.Image.ID {
		t.Fatalf("after touch: cached %v", got)
	}

	// Swapping two COPY steps re-executes every step from the swap on; the
	// layers before it are kept.
	swapped, _ := mustBuild(t, r, dir, strings.Replace(chainDF, "COPY a.txt /a.txt\nCOPY b.txt /b.txt", "COPY b.txt /b.txt\nCOPY a.txt /a.txt", 1))
	if got := cachedFlags(swapped); !equalBools(got, []bool{false, false, false, false}) {
		t.Fatalf("after swap: cached %v", got)
	}
	base := swapped.Image.Config.RootFS.DiffIDs[0]
	if base != first.Image.Config.RootFS.DiffIDs[0] || swapped.Steps[0].ChainID != first.Steps[0].ChainID {
		t.Error("the base layer must be kept across the swap")
	}
	for i := 1; i < len(swapped.Steps); i++ {
		if swapped.Steps[i].ChainID == touched.Steps[i].ChainID {
			t.Errorf("step %d (%s): chain ID must differ after the swap", i, swapped.Steps[i].Text)
		}
	}

	// --no-cache runs everything again.
	nc, _ := mustBuild(t, r, dir, "", func(o *Options) { o.NoCache = true })
	if got := cachedFlags(nc); !equalBools(got, []bool{false, false, false, false}) {
		t.Fatalf("--no-cache: cached %v", got)
	}
}

func TestArgMissesFromFirstUse(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.txt": "a"})
	df := "FROM scratch\nARG V=1\nCOPY a.txt /a.txt\nCOPY a.txt /v$V/a.txt\n"
	mustBuild(t, r, dir, df)
	res, _ := mustBuild(t, r, dir, "", func(o *Options) { o.BuildArgs = map[string]string{"V": "2"} })
	if got := cachedFlags(res); !equalBools(got, []bool{true, true, false}) {
		t.Fatalf("ARG change: cached %v", got)
	}
	if _, ok := find(layerEntries(t, r, res.Steps[3].DiffID), "v2/a.txt"); !ok {
		t.Error("build arg not expanded")
	}
}

func TestScratchDefaults(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"f": "x", "sub/g": "y", "link-target": "t"})
	os.Symlink("link-target", filepath.Join(dir, "sub", "ln"))
	res, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY f sub /out/\nCOPY --chown=7 f /owned\nCOPY <<EOT /here.txt\nhello\nEOT\n")
	if v, _ := imagecfg.LookupEnv(res.Image.Config.Config.Env, "PATH"); v != DefaultPath {
		t.Errorf("default PATH: %v", res.Image.Config.Config.Env)
	}
	es := layerEntries(t, r, res.Steps[1].DiffID)
	if got := strings.Join(names(es), " "); got != "out/ out/f out/g out/ln" {
		t.Errorf("entries %s", got)
	}
	if e, _ := find(es, "out/ln"); e.typ != tar.TypeSymlink || e.link != "link-target" {
		t.Errorf("symlink in a copied dir stays a symlink: %+v", e)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[2].DiffID), "owned"); e.uid != 7 || e.gid != 7 {
		t.Errorf("numeric chown: %+v", e)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[3].DiffID), "here.txt"); e.body != "hello\n" {
		t.Errorf("heredoc COPY: %+v", e)
	}
}

// Sources never leave the context: ../ and absolute paths stay inside it,
// and a symlink to the outside resolves inside it.
func TestContextConfinement(t *testing.T) {
	r := openRoot(t)
	outside := t.TempDir()
	writeFiles(t, outside, map[string]string{"secret": "host secret"})
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"inside": "ok"})
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "escape"))
	rel, _ := filepath.Rel(dir, filepath.Join(outside, "secret"))

	for _, src := range []string{rel, filepath.Join(outside, "secret"), "escape"} {
		_, _, err := tryBuild(r, dir, "FROM scratch\nCOPY "+src+" /x\n")
		if err == nil {
			t.Errorf("COPY %s read outside the context", src)
		}
	}
	res, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY ../../inside /x\n")
	if e, ok := find(layerEntries(t, r, res.Steps[1].DiffID), "x"); !ok || e.body != "ok" {
		t.Error("../ must resolve inside the context")
	}
}

// Bad input: one line with file:line, and the store as it was.
func TestBuildErrors(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.txt": "a"})
	before, _ := r.Store.Images()
	for _, tc := range []struct{ name, df, want string }{
		{"missing source", "FROM scratch\nCOPY nope.txt /\n", "Dockerfile:2: source \"nope.txt\": not found in the build context"},
		{"unknown stage", "FROM scratch\nCOPY --from=ghost /a /a\n", "Dockerfile:2: COPY --from=ghost: no stage or image"},
		{"bad chown", "FROM local/busybox\nCOPY --chown=ghost a.txt /a\n", "Dockerfile:2: --chown=ghost: unknown user \"ghost\""},
		{"unknown base", "FROM 127.0.0.1:1/nothere:1\n", "Dockerfile:1: base image \"127.0.0.1:1/nothere:1\" is not in the local store and pulling it failed"},
		{"bad chmod", "FROM scratch\nCOPY --chmod=999 a.txt /a\n", "Dockerfile:2: invalid --chmod=999"},
		{"syntax", "FROM scratch\nCOPY a.txt\n", "Dockerfile:2: COPY requires at least two arguments"},

		{"copy --parents", "FROM scratch\nCOPY --parents a.txt /d/\n", "Dockerfile:2: COPY --parents is not supported yet"},
		{"bad port", "FROM scratch\nEXPOSE 99999\n", "Dockerfile:2: invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := tryBuild(r, dir, tc.df, func(o *Options) { o.Tags = []string{"broken:1"} })
			if err == nil {
				t.Fatal("no error")
			}
			var pe *parser.Error
			if !errors.As(err, &pe) || strings.Contains(err.Error(), "\n") {
				t.Errorf("want a one-line *parser.Error, got %T %q", err, err)
			}
			if !strings.Contains(filepath.Base(err.Error()), "") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want %q", err, tc.want)
			}
		})
	}
	after, _ := r.Store.Images()
	if len(after) != len(before) {
		t.Errorf("failed builds changed the store: %d images -> %d", len(before), len(after))
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
