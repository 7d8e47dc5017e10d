package builder

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbuild/lbuild/builder/progress"
)

func needRunc(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
}

// runtimeArtefacts are paths the runtime creates in a rootfs; the busybox
// base has none of them, so none may show up in a RUN layer.
var runtimeArtefacts = []string{"proc/", "sys/", "dev/", "etc/hosts", "etc/resolv.conf", "etc/hostname", "run/", "run/secrets/"}

func assertNoArtefacts(t *testing.T, es []entry) {
	t.Helper()
	for _, e := range es {
		for _, a := range runtimeArtefacts {
			if e.name == a {
				t.Errorf("runtime artefact %s in layer: %v", a, names(es))
			}
		}
	}
}

func TestRunFilesystemChanges(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	res, out := mustBuild(t, r, dir, `FROM local/busybox
RUN mkdir -p /data/keep /data/gone && echo one > /data/keep/a && echo bye > /data/gone/x && echo old > /etc/motd
RUN echo changed > /data/keep/a && rm /etc/motd && rm -rf /data/gone && mkdir /data/gone && touch /data/gone/new \
 && chmod 700 /data/keep && chown 1000:50 /data/keep/a && ln -s /data/keep/a /link && ln /data/keep/a /data/hard
`)
	first := layerEntries(t, r, res.Steps[1].DiffID)
	if e, ok := find(first, "data/keep/a"); !ok || e.body != "one\n" {
		t.Errorf("created file: %v", names(first))
	}
	assertNoArtefacts(t, first)
	es := layerEntries(t, r, res.Steps[2].DiffID)
	assertNoArtefacts(t, es)
	got := strings.Join(names(es), " ")
	for _, want := range []string{"data/keep/a", "etc/.wh.motd", "data/gone/.wh..wh..opq", "data/gone/new", "link", "data/hard"} {
		if !strings.Contains(" "+got+" ", " "+want+" ") {
			t.Errorf("layer lacks %s: %s", want, got)
		}
	}
	if strings.Contains(got, "data/gone/x") {
		t.Errorf("opaque dir must not list the lower file: %s", got)
	}
	if e, _ := find(es, "data/hard"); e.body != "changed\n" || e.uid != 1000 || e.gid != 50 {
		t.Errorf("changed file: %+v", e)
	}
	if e, _ := find(es, "data/keep/"); e.mode&0o777 != 0o700 {
		t.Errorf("chmod: %o", e.mode)
	}
	if e, _ := find(es, "link"); e.typ != tar.TypeSymlink || e.link != "/data/keep/a" {
		t.Errorf("symlink: %+v", e)
	}
	a, _ := find(es, "data/keep/a")
	h, _ := find(es, "data/hard")
	if !(h.typ == tar.TypeLink && h.link == "data/keep/a") && !(a.typ == tar.TypeLink && a.link == "data/hard") {
		t.Errorf("hard link not kept: a=%+v hard=%+v", a, h)
	}
	if !strings.Contains(out, "RUN /bin/sh -c mkdir -p /data/keep") {
		t.Errorf("progress: %s", out)
	}
}

func TestRunConfigEffects(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	res, out := mustBuild(t, r, dir, `FROM local/busybox
ARG GREETING=hello
ENV WHO=world PATH=/opt/bin:$PATH
USER app
WORKDIR /work/dir
RUN echo "$GREETING $WHO $PATH" > out.txt && pwd >> out.txt && id -u >> out.txt && id -G >> out.txt
USER root
SHELL ["/bin/sh", "-ec"]
RUN echo via-shell > /shell.txt
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt"]
`, func(o *Options) { o.Progress = progress.NewPlain(&strings.Builder{}) })
	_ = out
	var runs []StepResult
	for _, s := range res.Steps {
		if strings.HasPrefix(s.Text, "RUN") {
			runs = append(runs, s)
		}
	}
	if len(runs) != 3 {
		t.Fatalf("runs: %+v", runs)
	}
	e, _ := find(layerEntries(t, r, runs[0].DiffID), "work/dir/out.txt")
	want := "hello world /opt/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/work/dir\n1000\n1000 50\n" // staff (50) lists app as a member
	if e.body != want || e.uid != 1000 {
		t.Errorf("RUN saw %q (uid %d), want %q", e.body, e.uid, want)
	}
	if e, _ := find(layerEntries(t, r, runs[1].DiffID), "shell.txt"); e.body != "via-shell\n" {
		t.Errorf("SHELL form: %+v", e)
	}
	if !strings.HasPrefix(runs[1].Text, `RUN /bin/sh -ec echo via-shell`) {
		t.Errorf("SHELL not applied: %q", runs[1].Text)
	}
	if e, _ := find(layerEntries(t, r, runs[2].DiffID), "exec.txt"); e.body != "exec-form\n" {
		t.Errorf("exec form: %+v", e)
	}
}

func TestRunFailure(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	_, _, err := tryBuild(r, dir, "FROM local/busybox\nRUN echo line1 && echo line2 >&2 && exit 7\n")
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{"Dockerfile:2:", "exit code 7", "line1", "line2"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
}

// A rebuild hits the cache without executing: a counter in a cache mount
// proves the RUN ran once; the cache dir persists and is never in a layer.
func TestRunCacheAndCacheMount(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	df := `FROM local/busybox
ARG V=1
RUN --mount=type=cache,target=/cache,id=counter n=$(cat /cache/n 2>/dev/null || echo 0); echo $((n+1)) > /cache/n; echo $((n+1)) > /ran
RUN echo v=$V > /v.txt
`
	first, _ := mustBuild(t, r, dir, df)
	second, _ := mustBuild(t, r, dir, "")
	if got := cachedFlags(second); !equalBools(got, []bool{true, true, true}) {
		t.Fatalf("rebuild cached %v", got)
	}
	data, err := os.ReadFile(filepath.Join(r.CacheMountDir(), firstDir(t, r.CacheMountDir()), "n"))
	if err != nil || string(data) != "1\n" {
		t.Fatalf("cache mount counter %q %v: the cached rebuild must not execute", data, err)
	}
	for _, e := range layerEntries(t, r, first.Steps[2].DiffID) {
		if strings.HasPrefix(e.name, "cache") {
			t.Errorf("cache mount content in layer: %s", e.name)
		}
	}
	// An ARG change misses from its first use (the RUN after it), not before.
	third, _ := mustBuild(t, r, dir, "", func(o *Options) { o.BuildArgs = map[string]string{"V": "2"} })
	if got := cachedFlags(third); !equalBools(got, []bool{true, false, false}) {
		t.Fatalf("ARG change: cached %v", got)
	}
	if data, _ := os.ReadFile(filepath.Join(r.CacheMountDir(), firstDir(t, r.CacheMountDir()), "n")); string(data) != "2\n" {
		t.Errorf("cache mount must persist across builds: %q", data)
	}
	if e, _ := find(layerEntries(t, r, third.Steps[3].DiffID), "v.txt"); e.body != "v=2\n" {
		t.Errorf("ARG value in RUN env: %+v", e)
	}
}

func firstDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			return e.Name()
		}
	}
	t.Fatal("no cache mount dir")
	return ""
}

func TestRunNetworkNone(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	res, _ := mustBuild(t, r, dir, "FROM local/busybox\nRUN --network=none ls /sys/class/net > /none.txt\nRUN ls /sys/class/net > /host.txt\n")
	if e, _ := find(layerEntries(t, r, res.Steps[1].DiffID), "none.txt"); e.body != "lo\n" {
		t.Errorf("--network=none sees %q", e.body)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[2].DiffID), "host.txt"); e.body != "lo\ntap0\n" {
		t.Errorf("default network sees %q", e.body)
	}
	res, _ = mustBuild(t, r, dir, "FROM local/busybox\nRUN ls /sys/class/net > /net.txt\n", func(o *Options) { o.Network = "none" })
	if e, _ := find(layerEntries(t, r, res.Steps[1].DiffID), "net.txt"); e.body != "lo\n" {
		t.Errorf("--network none for the build sees %q", e.body)
	}
}

// hostService listens on the host's 127.0.0.1, as a database or a cloud
// metadata proxy would, and greets each connection; it returns its port
// and the number of connections accepted so far.
func hostService(t *testing.T) (int, func() int64) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Write([]byte("secret-from-host\n"))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, n.Load
}

// A RUN on the default network cannot reach services on the host's
// loopback (as 127.0.0.1 or as the user-mode gateway); RUN --network=host
// and a build with --network host can.
func TestRunDefaultNetworkNoHostLoopback(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	port, accepted := hostService(t)
	try := fmt.Sprintf("(nc 127.0.0.1 %[1]d; nc 10.0.2.2 %[1]d) </dev/null", port)
	res, out := mustBuild(t, r, dir, "FROM local/busybox\n"+
		"RUN "+try+" > /default.txt 2>&1; true\n"+
		"RUN --network=default "+try+" > /default2.txt 2>&1; true\n"+
		"RUN --network=host "+try+" > /host.txt 2>&1; true\n")
	for i, name := range []string{"default.txt", "default2.txt", "host.txt"} {
		e, ok := find(layerEntries(t, r, res.Steps[i+1].DiffID), name)
		if reached := strings.Contains(e.body, "secret-from-host"); !ok || reached != (name == "host.txt") {
			t.Errorf("%s: %q\n%s", name, e.body, out)
		}
	}
	if n := accepted(); n != 1 {
		t.Errorf("the host's service accepted %d connections, want 1 (from RUN --network=host)", n)
	}
	res, _ = mustBuild(t, r, dir, "FROM local/busybox\nRUN "+try+" > /build-host.txt 2>&1; true\n",
		func(o *Options) { o.Network = "host" })
	if e, _ := find(layerEntries(t, r, res.Steps[1].DiffID), "build-host.txt"); !strings.Contains(e.body, "secret-from-host") {
		t.Errorf("build --network host: %q", e.body)
	}
	if _, _, err := tryBuild(r, dir, "FROM local/busybox\nRUN true\n", func(o *Options) { o.Network = "bridge" }); err == nil ||
		!strings.Contains(err.Error(), `unknown network "bridge": use default, host or none`) {
		t.Errorf("--network bridge: %v", err)
	}
	// The parser knows BuildKit's modes only (default, none, host).
	if _, _, err := tryBuild(r, dir, "FROM local/busybox\nRUN --network=bridge true\n"); err == nil ||
		!strings.Contains(err.Error(), `"bridge"`) {
		t.Errorf("RUN --network=bridge: %v", err)
	}
}

// A RUN on the default network reaches the Debian mirror by name, as
// apt-get would: DNS from the generated resolv.conf, then HTTP.
func TestRunDefaultNetworkOutbound(t *testing.T) {
	needRunc(t)
	const mirror = "deb.debian.org" // apt's mirror: the one outside host tests may reach
	c, err := net.DialTimeout("tcp", mirror+":80", 10*time.Second)
	if err != nil {
		t.Skipf("the Debian mirror %s:80 is unreachable from the host too: %v", mirror, err)
	}
	c.Close()
	r := openRoot(t)
	withBusybox(t, r)
	res, out := mustBuild(t, r, t.TempDir(), "FROM local/busybox\n"+
		"RUN wget -q -O /Release http://"+mirror+"/debian/dists/bookworm/Release\n")
	e, _ := find(layerEntries(t, r, res.Steps[1].DiffID), "Release")
	if !strings.Contains(e.body, "Origin: Debian\n") {
		t.Errorf("Release: %.200q\n%s", e.body, out)
	}
}

func TestRunSecretAndMounts(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"src/input.txt": "from context\n"})
	secret := filepath.Join(t.TempDir(), "token")
	os.WriteFile(secret, []byte("s3cr3t-value"), 0o600)
	res, out := mustBuild(t, r, dir, `FROM local/busybox
RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /secret-len
RUN --mount=type=bind,source=src,target=/mnt cat /mnt/input.txt > /copied
RUN --mount=type=tmpfs,target=/scratch echo temp > /scratch/t && ls /scratch > /tmpfs-list
`, func(o *Options) { o.Secrets = map[string]string{"token": secret} })
	for _, s := range res.Steps[1:] {
		for _, e := range layerEntries(t, r, s.DiffID) {
			if strings.Contains(e.body, "s3cr3t") || strings.HasPrefix(e.name, "run/") || strings.HasPrefix(e.name, "mnt") || strings.HasPrefix(e.name, "scratch") {
				t.Errorf("mount leaked into layer: %s %q", e.name, e.body)
			}
		}
		assertNoArtefacts(t, layerEntries(t, r, s.DiffID))
	}
	if e, _ := find(layerEntries(t, r, res.Steps[1].DiffID), "secret-len"); strings.TrimSpace(e.body) != "12" {
		t.Errorf("secret not readable: %q", e.body)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[2].DiffID), "copied"); e.body != "from context\n" {
		t.Errorf("bind mount: %q", e.body)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[3].DiffID), "tmpfs-list"); e.body != "t\n" {
		t.Errorf("tmpfs: %q", e.body)
	}
	hist, _ := os.ReadFile(r.Store.BlobPath(res.Image.Manifest.Digest))
	cfg, _ := os.ReadFile(r.Store.BlobPath(res.Image.ID))
	if strings.Contains(string(hist)+string(cfg)+out, "s3cr3t") {
		t.Error("secret value in image metadata or output")
	}
	// As BuildKit: root's, mode 0400, unless uid, gid and mode say otherwise;
	// the owner and mode are part of the step's key.
	res, _ = mustBuild(t, r, dir, `FROM local/busybox
RUN --mount=type=secret,id=token stat -c '%u:%g %a' /run/secrets/token > /default
RUN --mount=type=secret,id=token,uid=1000,gid=1001,mode=0440 stat -c '%u:%g %a' /run/secrets/token > /given
USER 1000
RUN --mount=type=secret,id=token,uid=1000 cat /run/secrets/token > /tmp/as-user
`, func(o *Options) { o.Secrets = map[string]string{"token": secret} })
	for i, want := range map[int]string{1: "0:0 400\n", 2: "1000:1001 440\n"} {
		if e, _ := find(layerEntries(t, r, res.Steps[i].DiffID), []string{"", "default", "given"}[i]); e.body != want {
			t.Errorf("secret owner and mode, step %d: %q, want %q", i, e.body, want)
		}
	}
	if e, _ := find(layerEntries(t, r, res.Steps[4].DiffID), "tmp/as-user"); e.body != "s3cr3t-value" {
		t.Errorf("secret as its uid: %q", e.body)
	}
	// Without the secret (not required) the step runs without it; a required one fails clearly.
	_, _, err := tryBuild(r, dir, "FROM local/busybox\nRUN --mount=type=secret,id=token,required cat /run/secrets/token\n")
	if err == nil || !strings.Contains(err.Error(), "--secret id=token") {
		t.Errorf("missing required secret: %v", err)
	}
}

func TestRunHeredoc(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	res, _ := mustBuild(t, r, dir, `FROM local/busybox
RUN <<EOF
echo first > /h1
echo second >> /h1
EOF
RUN <<EOF
#!/bin/sh
echo "script $0" > /h2
EOF
RUN cat <<EOF > /h3
piped heredoc
EOF
`)
	check := func(step int, name, want string) {
		if e, _ := find(layerEntries(t, r, res.Steps[step].DiffID), name); e.body != want {
			t.Errorf("%s = %q, want %q", name, e.body, want)
		}
	}
	check(1, "h1", "first\nsecond\n")
	// The layer holds exactly what the command wrote: no runtime stubs, and
	// no directory the runtime only touched (/etc for resolv.conf and hosts).
	if got := strings.Join(names(layerEntries(t, r, res.Steps[1].DiffID)), " "); got != "h1" {
		t.Errorf("RUN layer = %q, want just h1", got)
	}
	check(2, "h2", "script /dev/pipes/EOF\n")
	check(3, "h3", "piped heredoc\n")
	for _, s := range res.Steps[1:] {
		assertNoArtefacts(t, layerEntries(t, r, s.DiffID))
	}
}

// Ctrl-C: a cancelled build stops the container and leaves no mount and no
// runtime container behind.
func TestRunInterrupted(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM local/busybox\nRUN touch /started && sleep 60\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Build(ctx, r, Options{ContextDir: dir})
		done <- err
	}()
	time.Sleep(700 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("want context.Canceled, got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("cancelled build did not stop")
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), r.Dir) {
		t.Errorf("mounts left under %s:\n%s", r.Dir, mi)
	}
	out, err := exec.Command("runc", "--root", filepath.Join(r.RunDir(), "runc"), "list", "-q").CombinedOutput()
	if err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("runtime containers left: %s", out)
	}
}

func TestRunWithoutRuntime(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	t.Setenv("PATH", t.TempDir())
	_, _, err := tryBuild(r, dir, "FROM scratch\nRUN true\n")
	if err == nil || !strings.Contains(err.Error(), "apt-get install runc") || !strings.Contains(err.Error(), "Dockerfile:2") {
		t.Errorf("without runc: %v", err)
	}
	// Builds without RUN still work.
	writeFiles(t, dir, map[string]string{"a": "a"})
	mustBuild(t, r, dir, "FROM scratch\nCOPY a /a\n")
}

// A stage rebuilt with --no-cache records a new result under the same key;
// steps built on (or copying from) its old result must not be reused for
// the new one: keys chain the content they stand on, not only the parent key.
func TestNoCacheStageNotStale(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	df := "FROM local/busybox AS builder\nRUN cat /proc/sys/kernel/random/uuid > /stamp\n" +
		"FROM builder AS child\nRUN cp /stamp /child-stamp\n" +
		"FROM local/busybox\nCOPY --from=builder /stamp /stamp\nCOPY --from=child /child-stamp /child-stamp\n"
	mustBuild(t, r, dir, df)
	fresh, _ := mustBuild(t, r, dir, "", func(o *Options) { o.NoCache = true; o.Target = "builder" })
	stamp, _ := find(layerEntries(t, r, fresh.Steps[len(fresh.Steps)-1].DiffID), "stamp")
	res, _ := mustBuild(t, r, dir, "")
	var got, child entry
	for _, s := range res.Steps {
		if s.DiffID == "" {
			continue
		}
		if e, ok := find(layerEntries(t, r, s.DiffID), "stamp"); ok && s.Stage == "stage-2" {
			got = e
		}
		if e, ok := find(layerEntries(t, r, s.DiffID), "child-stamp"); ok && s.Stage == "stage-2" {
			child = e
		}
	}
	if got.body != stamp.body || child.body != stamp.body {
		t.Errorf("after --no-cache of the builder stage (stamp %q), the image copied %q and the child stage has %q", stamp.body, got.body, child.body)
	}
}

// A bind mount from the context sees what .dockerignore leaves in, no
// more: what the step sees is what its cache key was computed over.
func TestRunBindHonoursDockerignore(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"src/app.txt": "app", "src/secret.env": "TOPSECRET", ".dockerignore": "src/secret.env\n"})
	res, _ := mustBuild(t, r, dir, "FROM local/busybox\nRUN --mount=type=bind,source=src,target=/src ls /src > /seen\n")
	if e, _ := find(layerEntries(t, r, res.Steps[1].DiffID), "seen"); e.body != "app.txt\n" {
		t.Errorf("bind mount showed %q, want only app.txt", e.body)
	}
}

// A RUN that mounts one cache id twice with sharing=locked fails in one
// line instead of waiting for itself forever.
func TestRunLockedCacheTwice(t *testing.T) {
	r := openRoot(t)
	dir := t.TempDir()
	_, _, err := tryBuild(r, dir, "FROM scratch\nRUN --mount=type=cache,id=x,target=/a,sharing=locked --mount=type=cache,id=x,target=/b,sharing=locked true\n",
		func(o *Options) { o.Executor = &fakeExecutor{} })
	if err == nil || !strings.Contains(err.Error(), `cache "x" twice with sharing=locked`) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want one line naming the twice-locked cache", err)
	}
}
