package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbuild/lbuild/builder"
	"github.com/lbuild/lbuild/runtime/runc"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/system"
	"golang.org/x/sys/unix"
)

// loopCmd runs until SIGTERM, then exits 0 (a shell as pid 1 ignores
// signals it has no handler for).
var loopCmd = []string{"sh", "-c", `trap "exit 0" TERM; while :; do sleep 0.05; done`}

// containerImage builds a small image on the busybox base holding /data.txt.
func containerImage(t *testing.T, r *testRoot, tag string) {
	t.Helper()
	needRunc(t)
	withBusybox(t, r)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"data.txt": "base\n"})
	mustBuild(t, r, dir, "FROM local/busybox\nCOPY data.txt /data.txt\n", func(o *builder.Options) { o.Tags = []string{tag} })
}

// create makes a container and removes it (forcibly) at the end of the test.
func create(t *testing.T, r *testRoot, opts Options) *Container {
	t.Helper()
	c, err := r.Create(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove(context.Background(), c.ID, true) })
	return c
}

// startBG runs a container's process in this process, in the background,
// and waits until it runs.
func startBG(t *testing.T, r *testRoot, c *Container) <-chan int {
	t.Helper()
	codec := make(chan int, 1)
	go func() {
		code, err := r.Run(context.Background(), c.ID, Stdio{})
		if err != nil {
			t.Errorf("run %s: %v", c.Name, err)
		}
		codec <- code
	}()
	rt, err := r.runtime(c)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st, err := rt.State(context.Background(), c.ID); err == nil && st.Status == "running" {
			return codec
		}
	}
	t.Fatalf("container %s did not start", c.Name)
	return nil
}

// runFG runs a new container of image to completion and returns its output.
func runFG(t *testing.T, r *testRoot, image string, args ...string) (*Container, string) {
	t.Helper()
	c := create(t, r, Options{Image: image, Cmd: args})
	var out bytes.Buffer
	code, err := r.Run(context.Background(), c.ID, Stdio{Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		t.Fatalf("run %q: code %d, %v\n%s", args, code, err, out.String())
	}
	return c, out.String()
}

func execOut(t *testing.T, r *testRoot, c *Container, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := r.Exec(context.Background(), c.ID, ExecOptions{Args: args, Stdio: Stdio{Stdout: &out, Stderr: &out}}); err != nil {
		t.Fatalf("exec %q: %v\n%s", args, err, out.String())
	}
	return out.String()
}

func changeLines(t *testing.T, r *testRoot, c *Container) []string {
	t.Helper()
	changes, err := r.Changes(context.Background(), c.ID)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ch := range changes {
		out = append(out, ch.String())
	}
	return out
}

// layersBelow returns the committed layers (snapshots/layers/<hex>) the
// overlay mounted at target stands on, top first: its lowerdirs resolved
// through their l/ links, or, for an indexed layer mounted for this view,
// through the index file mounted there.
func layersBelow(t *testing.T, r *system.Root, target string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]string{} // mount point -> source
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, " - "); i > 0 {
			f, g := strings.Fields(line[:i]), strings.Fields(line[i+3:])
			if len(f) >= 5 && len(g) >= 2 {
				sources[f[4]] = g[1]
			}
		}
	}
	snaps := filepath.Join(r.Dir, "snapshots")
	var out []string
	for _, l := range strings.Split(overlayLowers(t, target), ":") {
		p := filepath.Join(snaps, l)
		if src, ok := sources[p]; ok {
			p = src // an indexed layer's layer.erofs
		} else if dst, err := filepath.EvalSymlinks(p); err == nil {
			p = dst // a layer's fs dir
		}
		out = append(out, filepath.Base(filepath.Dir(p)))
	}
	return out
}

// overlayLowers returns the lowerdir option of the overlay mounted at target.
func overlayLowers(t *testing.T, target string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != target {
			continue
		}
		for _, opt := range strings.Split(f[len(f)-1], ",") {
			if v, ok := strings.CutPrefix(opt, "lowerdir="); ok {
				return v
			}
		}
	}
	t.Fatalf("no overlay mounted at %s", target)
	return ""
}

func TestContainersShareLayers(t *testing.T) {
	r := openRoot(t)
	if r.Snaps.Driver() != snapshot.DriverOverlay {
		t.Skip("needs the overlay driver")
	}
	containerImage(t, r, "img")
	c1 := create(t, r, Options{Image: "img", Name: "one", Cmd: loopCmd})
	c2 := create(t, r, Options{Image: "img", Name: "two", Cmd: loopCmd})

	// The same layers below (the image's and its init layer), each
	// container with its own upperdir: a layer unpacked once, or a layer
	// kept as its tar and mounted through its index, the same files.
	l1, l2 := layersBelow(t, r.Root, c1.Rootfs), layersBelow(t, r.Root, c2.Rootfs)
	if !slices.Equal(l1, l2) || len(l1) == 0 {
		t.Errorf("layers below differ:\n%s\n%s", l1, l2)
	}
	if n := len(l1); n != 3 { // busybox, COPY data.txt, init
		t.Errorf("layers below %q: %d, want 3", l1, n)
	}

	done1 := startBG(t, r, c1)
	startBG(t, r, c2)
	execOut(t, r, c1, "sh", "-c", "echo one > /data.txt; touch /only1")
	if got := execOut(t, r, c2, "cat", "/data.txt"); got != "base\n" {
		t.Errorf("c2 sees /data.txt = %q", got)
	}
	if got := execOut(t, r, c2, "sh", "-c", "test -e /only1 && echo leaked || echo apart"); got != "apart\n" {
		t.Errorf("c2: %q", got)
	}
	// Running containers: the runtime's mounts leave no trace in the diff.
	if got, want := changeLines(t, r, c1), []string{"C /data.txt", "A /only1"}; !slices.Equal(got, want) {
		t.Errorf("diff of c1 = %q, want %q", got, want)
	}
	if got := changeLines(t, r, c2); len(got) != 0 {
		t.Errorf("diff of c2 = %q, want nothing", got)
	}

	if err := r.Stop(context.Background(), "one", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if code := <-done1; code != 0 {
		t.Errorf("stopped container exited %d", code)
	}
	c, err := r.Get(context.Background(), "one")
	if err != nil || c.Status != StatusExited || c.ExitCode != 0 {
		t.Errorf("after stop: %+v, %v", c, err)
	}
	if err := r.Remove(context.Background(), "two", false); err == nil {
		t.Error("removing a running container without force succeeded")
	}
}

func TestContainerDeleteIsWhiteout(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "img")
	c, _ := runFG(t, r, "img", "rm", "/data.txt")
	if got, want := changeLines(t, r, c), []string{"D /data.txt"}; !slices.Equal(got, want) {
		t.Errorf("diff = %q, want %q", got, want)
	}
	var tarBuf bytes.Buffer
	if err := r.Snaps.DiffLive(context.Background(), c.Snapshot, &tarBuf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(tarBuf.Bytes(), []byte(".wh.data.txt")) {
		t.Error("no whiteout .wh.data.txt in the container's layer")
	}
	if _, out := runFG(t, r, "img", "cat", "/data.txt"); out != "base\n" {
		t.Errorf("the image lost /data.txt: %q", out)
	}
}

func TestCommitContainer(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "img")
	c, _ := runFG(t, r, "img", "sh", "-c", "echo new > /new.txt; rm /data.txt; mkdir /d; echo x > /d/f")
	img, err := r.Commit(context.Background(), c.Name, "committed:1", CommitOptions{Message: "test"})
	if err != nil {
		t.Fatal(err)
	}
	base, err := r.Store.Resolve("img")
	if err != nil {
		t.Fatal(err)
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(base.Config.RootFS.DiffIDs)+1 || !slices.Equal(diffIDs[:len(diffIDs)-1], base.Config.RootFS.DiffIDs) {
		t.Fatalf("diff IDs %v on base %v", diffIDs, base.Config.RootFS.DiffIDs)
	}
	got := layerNames(t, r, diffIDs[len(diffIDs)-1].String())
	slices.Sort(got)
	if want := []string{".wh.data.txt", "d/", "d/f", "new.txt"}; !slices.Equal(got, want) {
		t.Errorf("committed layer holds %q, want exactly %q", got, want)
	}
	h := img.Config.History[len(img.Config.History)-1]
	if !strings.HasPrefix(h.CreatedBy, "lbuild commit") || h.Comment != "test" {
		t.Errorf("history entry %+v", h)
	}
	if _, out := runFG(t, r, "committed:1", "sh", "-c", "cat /new.txt /d/f; test -e /data.txt || echo gone"); out != "new\nx\ngone\n" {
		t.Errorf("committed image: %q", out)
	}
}

func TestRemoveContainerKeepsImage(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "img")
	c, _ := runFG(t, r, "img", "sh", "-c", "echo changed > /data.txt")
	used, err := r.Images()
	if err != nil || len(used[c.ImageID]) != 1 {
		t.Fatalf("Images = %v, %v", used, err)
	}
	if err := r.Remove(context.Background(), c.Name, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(context.Background(), c.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed container: %v", err)
	}
	if _, err := r.Snaps.Changes(context.Background(), c.Snapshot); !errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("container layer still there: %v", err)
	}
	img, err := r.Store.Resolve("img")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Snaps.Exists(system.ChainID(img.Config.RootFS.DiffIDs)) {
		t.Error("the image's unpacked layers went with the container")
	}
	if used, _ := r.Images(); len(used[img.ID]) != 0 {
		t.Errorf("image still in use: %v", used)
	}
	if _, out := runFG(t, r, "img", "cat", "/data.txt"); out != "base\n" {
		t.Errorf("image after rm: %q", out)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.Dir, "containers")); len(ents) != 3 { // .lock, .init (init layers) and the last container
		t.Errorf("containers dir holds %d entries", len(ents))
	}
}

// BenchmarkContainerStart measures create + run of "true" + remove on a
// 10 MB and a 500 MB image: the container's layer is an empty upperdir over
// the unpacked image, so the cost must not grow with the image.
func BenchmarkContainerStart(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	r, err := openRootAt(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	withBusybox(b, r)
	for _, mb := range []int{10, 500} {
		tag := fmt.Sprintf("big:%dmb", mb)
		dir := b.TempDir()
		data := make([]byte, 1<<20)
		f, err := os.Create(filepath.Join(dir, "blob"))
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < mb; i++ {
			for j := range data {
				data[j] = byte(i*31 + j*7)
			}
			f.Write(data)
		}
		f.Close()
		os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM local/busybox\nCOPY blob /blob\n"), 0o644)
		if _, err := builder.Build(context.Background(), r.Root, builder.Options{ContextDir: dir, Tags: []string{tag}}); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(dir)
		// The first container unpacks the image once; the runs measure starts.
		c, err := r.Create(context.Background(), Options{Image: tag, Cmd: []string{"true"}})
		if err != nil {
			b.Fatal(err)
		}
		r.Remove(context.Background(), c.ID, true)
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) {
			for b.Loop() {
				c, err := r.Create(context.Background(), Options{Image: tag, Cmd: []string{"true"}})
				if err != nil {
					b.Fatal(err)
				}
				if code, err := r.Run(context.Background(), c.ID, Stdio{}); err != nil || code != 0 {
					b.Fatalf("run: %d %v", code, err)
				}
				if err := r.Remove(context.Background(), c.ID, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A Create that crashed before writing its record leaves a marker
// whose lock is free: the next Open removes its snapshot. One whose marker
// is locked (still being made) is left alone.
func TestReapUnfinishedContainers(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	img, err := r.Store.Resolve("local/busybox")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.EnsureChain(ctx, img.Config.RootFS.DiffIDs, img.Layers); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"crashed", "inprogress"} {
		if _, err := r.Snaps.Prepare(ctx, "ctr-"+id, system.ChainID(img.Config.RootFS.DiffIDs), snapshot.WithPersistent()); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(r.containersDir(), 0o700)
	os.WriteFile(r.creatingMarker("crashed"), nil, 0o600)
	done, err := r.markCreating("inprogress")
	if err != nil {
		t.Fatal(err)
	}
	defer done()

	r2, err := openRootAt(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.creatingMarker("crashed")); err == nil {
		t.Error("the crashed creation's marker is still there")
	}
	if err := r2.Snaps.Remove(ctx, "ctr-crashed"); !errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("the crashed creation's snapshot was not reaped (Remove: %v)", err)
	}
	if err := r2.Snaps.Remove(ctx, "ctr-inprogress"); err != nil {
		t.Errorf("the in-progress creation's snapshot was reaped: %v", err)
	}
}

// A container on the default network has its own network namespace: it
// cannot reach a service on the host's loopback; --network host can.
func TestContainerNetwork(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Write([]byte("secret-from-host\n"))
			c.Close()
		}
	}()
	try := fmt.Sprintf("ip -o link | cut -d: -f2 | tr -d '\\n '; echo; nc 127.0.0.1 %[1]d </dev/null 2>&1; nc 10.0.2.2 %[1]d </dev/null 2>&1; true",
		ln.Addr().(*net.TCPAddr).Port)
	c := create(t, r, Options{Image: "local/busybox", Cmd: []string{"sh", "-c", try}})
	if c.Network != "private" {
		t.Errorf("default network recorded as %q", c.Network)
	}
	var out bytes.Buffer
	code, err := r.Run(context.Background(), c.ID, Stdio{Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		t.Fatalf("run: %d %v\n%s", code, err, out.String())
	}
	if got := out.String(); !strings.HasPrefix(got, "lotap0\n") || strings.Contains(got, "secret-from-host") {
		t.Errorf("default network: %q", got)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the host's service accepted %d connections from the default network", n)
	}
	ch := create(t, r, Options{Image: "local/busybox", Cmd: []string{"sh", "-c", try}, Network: "host"})
	out.Reset()
	if code, err := r.Run(context.Background(), ch.ID, Stdio{Stdout: &out, Stderr: &out}); err != nil || code != 0 ||
		!strings.Contains(out.String(), "secret-from-host") {
		t.Errorf("host network: %d %v %q", code, err, out.String())
	}
	if _, err := r.Create(context.Background(), Options{Image: "local/busybox", Network: "bridge"}); err == nil ||
		!strings.Contains(err.Error(), `unknown network "bridge": use default, host or none`) {
		t.Errorf("network bridge: %v", err)
	}
}

// A port published with Options.Ports (run -p) reaches the container's
// server from the host's loopback; the mapping is recorded, and a second
// container cannot take the same host port.
func TestContainerPublishPort(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	serve := `mkdir -p /w && echo "served from the container" > /w/index.html && exec httpd -f -p 8080 -h /w`
	c := create(t, r, Options{Image: "local/busybox", Name: "web", Cmd: []string{"sh", "-c", serve},
		Ports: []string{fmt.Sprintf("%d:8080", port)}})
	want := []runc.PortMapping{{HostIP: "127.0.0.1", HostPort: uint16(port), ContainerPort: 8080, Proto: "tcp"}}
	if got, err := r.Get(context.Background(), c.ID); err != nil || !reflect.DeepEqual(got.Ports, want) {
		t.Errorf("recorded ports %+v, %v; want %+v", got.Ports, err, want)
	}
	codec := startBG(t, r, c)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var body string
	for range 100 { // httpd starts after the runtime reports "running"
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if body != "served from the container\n" {
		t.Errorf("GET %s = %q", url, body)
	}

	c2 := create(t, r, Options{Image: "local/busybox", Cmd: []string{"true"}, Ports: []string{fmt.Sprintf("127.0.0.1:%d:80", port)}})
	if code, err := r.Run(context.Background(), c2.ID, Stdio{}); err == nil ||
		!strings.Contains(err.Error(), fmt.Sprintf("publishing 127.0.0.1:%d->80/tcp", port)) {
		t.Errorf("a second container on host port %d: %d, %v", port, code, err)
	}

	if err := r.Stop(context.Background(), c.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	<-codec
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Image: "local/busybox", Ports: []string{"80"}}, `invalid port mapping "80"`},
		{Options{Image: "local/busybox", Ports: []string{"8080:80/sctp"}}, "protocol must be tcp or udp"},
		{Options{Image: "local/busybox", Ports: []string{"8080:80"}, Network: "host"}, "only on the default network"},
	} {
		if _, err := r.Create(context.Background(), tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.opts.Ports, err, tc.want)
		}
	}
}

// The record and snapshot metadata of a --rm container are not synced: a
// crash may leave them empty. The next recovery removes such a container
// (its record, layer and runtime state), also one whose Create the crash
// cut before the record was written (marker left, layer metadata empty). A
// kept container's record is synced: if it is unreadable all the same (a
// damaged disk), recovery leaves the container as it is.
func TestReapContainerWithCutRecord(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "cut:1")
	ctx := context.Background()
	newRm := func() *Container {
		c, err := r.Create(ctx, Options{Image: "cut:1", Cmd: []string{"true"}, AutoRemove: true})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cut, unfinished := newRm(), newRm()
	kept := create(t, r, Options{Image: "cut:1", Cmd: []string{"true"}})
	damaged := create(t, r, Options{Image: "cut:1", Cmd: []string{"true"}})
	snapDir := func(c *Container) string { return filepath.Dir(c.Rootfs) }
	truncate := func(files ...string) {
		for _, f := range files {
			if err := os.Truncate(f, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	record := func(c *Container) string { return filepath.Join(r.containerDir(c.ID), "config.json") }
	// What a crash before the data reached the disk leaves (after a crash
	// nothing is mounted).
	truncate(record(cut), filepath.Join(snapDir(cut), "meta.json"))
	if err := os.Remove(record(unfinished)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(r.creatingMarker(unfinished.ID), nil, 0o600)
	truncate(filepath.Join(snapDir(unfinished), "meta.json"))
	truncate(record(damaged))
	for _, c := range []*Container{cut, unfinished} {
		if err := unix.Unmount(c.Rootfs, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
	}

	r2, err := openRootAt(r.Dir)
	if err != nil {
		t.Fatalf("recovery after the crash: %v", err)
	}
	for _, c := range []*Container{cut, unfinished} {
		if _, err := os.Stat(r.containerDir(c.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("container %s: its directory is still there: %v", c.Name, err)
		}
		if _, err := os.Stat(snapDir(c)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("container %s: its layer is still there: %v", c.Name, err)
		}
		if err := r2.Snaps.Remove(ctx, c.Snapshot); !errors.Is(err, snapshot.ErrNotFound) {
			t.Errorf("container %s: Remove of its snapshot gave %v", c.Name, err)
		}
	}
	all, err := r2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].ID != kept.ID {
		t.Errorf("containers after recovery: %v, want only %s", all, kept.Name)
	}
	for _, c := range []*Container{kept, damaged} {
		if _, err := os.Stat(c.Rootfs); err != nil {
			t.Errorf("container %s: its layer: %v", c.Name, err)
		}
	}
	if _, err := os.Stat(record(damaged)); err != nil {
		t.Errorf("the damaged record was removed: %v", err)
	}
	// The damaged container cannot be removed by name: its layer by hand.
	if err := r2.Snaps.Remove(ctx, damaged.Snapshot); err != nil {
		t.Error(err)
	}
}

// A --rm container whose owner died (lbuild killed, or a crash) is removed
// by the next recovery, as docker removes them when it starts again; a kept
// one stays, marked exited.
func TestRecoverRemovesOrphanedRmContainer(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "orphan:1")
	ctx := context.Background()
	rm, err := r.Create(ctx, Options{Image: "orphan:1", Cmd: []string{"true"}, AutoRemove: true})
	if err != nil {
		t.Fatal(err)
	}
	kept := create(t, r, Options{Image: "orphan:1", Cmd: []string{"true"}})
	owned := create(t, r, Options{Image: "orphan:1", Cmd: []string{"true"}, AutoRemove: true})
	notStarted := create(t, r, Options{Image: "orphan:1", Cmd: []string{"true"}, AutoRemove: true})
	dead := runc.Owner{Pid: os.Getpid(), Start: 1} // this pid, another start: not alive
	self, err := runc.Self()
	if err != nil {
		t.Fatal(err)
	}
	for c, o := range map[*Container]runc.Owner{rm: dead, kept: dead, owned: self} {
		if _, err := r.updateContainer(c.ID, func(s *Container) { s.Status, s.Owner = StatusRunning, o }); err != nil {
			t.Fatal(err)
		}
	}
	r2, err := openRootAt(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.containerDir(rm.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the orphaned --rm container is still there: %v", err)
	}
	if err := r2.Snaps.Remove(ctx, rm.Snapshot); !errors.Is(err, snapshot.ErrNotFound) {
		t.Errorf("its layer: Remove gave %v", err)
	}
	c, err := r2.Get(ctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != StatusExited {
		t.Errorf("the kept container: status %s, want exited", c.Status)
	}
	// A --rm container whose owner lives, or that has not run yet, stays.
	for _, c := range []*Container{owned, notStarted} {
		if _, err := os.Stat(c.Rootfs); err != nil {
			t.Errorf("container %s (--rm, owner alive or not started): %v", c.Name, err)
		}
	}
	// Nothing runs it: exited, so that the test's clean-up need not stop it.
	r.updateContainer(owned.ID, func(s *Container) { s.Status = StatusExited })
}

// Two commands recovering at once (as after a reboot) both succeed and
// leave nothing of the --rm containers a crash left behind.
func TestConcurrentRecoveries(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "race:1")
	ctx := context.Background()
	var gone []*Container
	for i := 0; i < 4; i++ {
		c, err := r.Create(ctx, Options{Image: "race:1", Cmd: []string{"true"}, AutoRemove: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Unmount(c.Rootfs, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // a cut record and layer metadata
			os.Truncate(filepath.Join(r.containerDir(c.ID), "config.json"), 0)
			os.Truncate(filepath.Join(filepath.Dir(c.Rootfs), "meta.json"), 0)
		} else if _, err := r.updateContainer(c.ID, func(s *Container) { // its owner died
			s.Status, s.Owner = StatusRunning, runc.Owner{Pid: os.Getpid(), Start: 1}
		}); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, c)
	}
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := openRootAt(r.Dir)
			errs <- err
		}()
	}
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Errorf("a recovery beside another: %v", err)
		}
	}
	r3, err := openRootAt(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range gone {
		if _, err := os.Stat(r.containerDir(c.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("container %s is still there: %v", c.Name, err)
		}
		if _, err := os.Stat(filepath.Dir(c.Rootfs)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("container %s: its layer is still there: %v", c.Name, err)
		}
	}
	if all, err := r3.List(ctx); err != nil || len(all) != 0 {
		t.Errorf("containers after recovery: %v %v", all, err)
	}
}
