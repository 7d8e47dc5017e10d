package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbuild/lbuild/builder/executor"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/system"
)

// pipelineDockerfile has layer steps back to back (RUN, COPY, RUN reading
// what the step before wrote, a deletion, a directory touched and restored)
// in two stages, one copying from the other, with metadata steps between.
const pipelineDockerfile = `FROM local/busybox AS lib
RUN mkdir -p /lib/x && echo lib > /lib/x/lib.txt
RUN cat /lib/x/lib.txt > /lib/copy.txt && rm /lib/x/lib.txt

FROM local/busybox
ENV A=1
RUN echo one > /one && mkdir /d && echo keep > /d/keep
COPY data.txt /d/data.txt
RUN cat /one /d/data.txt > /two && rm /one
LABEL x=y
RUN touch /tmp/stub && rm /tmp/stub && echo three > /three
COPY --from=lib /lib /lib
RUN cat /two /three /lib/copy.txt > /all
`

// A build whose layers are stored while later steps run gives the same
// image, byte for byte, as one storing each layer before the next step,
// one stage at a time (each in a fresh store: nothing cached).
func TestPipelinedBuildSameImageAsSerial(t *testing.T) {
	needRunc(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"data.txt": "data\n"})
	var ids []string
	var indexed []int
	canIndex := false
	for _, serial := range []bool{true, false} {
		r := openRoot(t)
		withBusybox(t, r)
		res, out := mustBuild(t, r, dir, pipelineDockerfile, func(o *Options) {
			if serial {
				o.NoPipeline, o.Parallel = true, 1
			}
		})
		ids = append(ids, res.Image.ID.String())
		for _, s := range res.Steps {
			layer := strings.HasPrefix(s.Text, "RUN") || strings.HasPrefix(s.Text, "COPY")
			if layer && (s.DiffID == "" || s.ChainID == "") {
				t.Errorf("serial=%v: step %q has no layer in the result", serial, s.Text)
			}
		}
		// Cached the second time, and the same image.
		again, _ := mustBuild(t, r, dir, pipelineDockerfile)
		if again.Image.ID != res.Image.ID {
			t.Errorf("serial=%v: a cached rebuild gave %s, first build %s\n%s", serial, again.Image.ID, res.Image.ID, out)
		}
		for _, s := range again.Steps {
			if !s.Cached {
				t.Errorf("serial=%v: rebuild ran %q again", serial, s.Text)
			}
		}
		assertNoActiveSnapshots(t, r)
		indexed = append(indexed, indexedLayers(t, r))
		canIndex = r.Snaps.Indexes()
	}
	// The pipelined build wrote its COPY from the context to memory and
	// kept the layer as its blob and an index; the serial one unpacked it
	// (the busybox base, built the default way, is indexed in both).
	if canIndex && indexed[1] != indexed[0]+1 {
		t.Errorf("indexed layers: serial build %d, pipelined %d, want one more", indexed[0], indexed[1])
	}
	if ids[0] != ids[1] {
		t.Errorf("serial build %s, pipelined build %s", ids[0], ids[1])
	}
}

// recordCounter is an executor that notes, for each RUN, how many cache
// records the store holds when it runs, and writes a file as fakeExecutor
// does.
type recordCounter struct {
	r      *system.Root
	counts []int
}

func (c *recordCounter) Run(ctx context.Context, rootfs string, meta executor.Meta) error {
	ents, err := os.ReadDir(c.r.Records.Dir())
	if err != nil {
		return err
	}
	c.counts = append(c.counts, len(ents))
	return os.WriteFile(filepath.Join(rootfs, "ran"), []byte(meta.Args[len(meta.Args)-1]), 0o644)
}

// The step after a layer step starts before that step's layer is stored:
// its record (written once the layer is) is not there yet when the next
// RUN runs; with NoPipeline it is.
func TestPipelinedNextStepStartsBeforeLayerStored(t *testing.T) {
	for _, serial := range []bool{true, false} {
		r := openRoot(t)
		if r.Snaps.Driver() != snapshot.DriverOverlay {
			t.Skip("pipelined commits need the overlay snapshot driver")
		}
		dir := t.TempDir()
		c := &recordCounter{r: r}
		_, out, err := tryBuild(r, dir, "FROM scratch\nRUN first\nRUN second\n", func(o *Options) {
			o.Executor, o.NoPipeline = c, serial
		})
		if err != nil {
			t.Fatalf("serial=%v: %v\n%s", serial, err, out)
		}
		if len(c.counts) != 2 {
			t.Fatalf("serial=%v: %d RUNs", serial, len(c.counts))
		}
		grew := c.counts[1] > c.counts[0]
		if grew != serial {
			t.Errorf("serial=%v: records at each RUN %v: the first step's record was stored before the second ran: %v", serial, c.counts, grew)
		}
	}
}

// indexedLayers counts the committed layers kept as their tar and an index.
func indexedLayers(t *testing.T, r *system.Root) int {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(r.Dir, "snapshots", "layers", "*", "layer.erofs"))
	return len(m)
}

func assertNoActiveSnapshots(t *testing.T, r *system.Root) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.Dir, "snapshots", "active"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%d active snapshots left after the build", len(ents))
	}
}

// failingCommit is a snapshotter whose first Commit fails, a while after it
// is called (as a full disk would, once the layer is written).
type failingCommit struct {
	snapshot.Snapshotter
	calls *atomic.Int32
}

func (f failingCommit) Commit(ctx context.Context, name, key string, opts ...snapshot.CommitOpt) error {
	if f.calls.Add(1) > 1 {
		return f.Snapshotter.Commit(ctx, name, key, opts...)
	}
	time.Sleep(300 * time.Millisecond)
	return errors.New("no space left on device (test)")
}

// A layer stored in the background that fails fails the build, even when
// the next step finds its own record in the cache (it then has no
// filesystem to stand on): never an image with a layer missing.
func TestPipelinedFailedLayerFailsBuild(t *testing.T) {
	r := openRoot(t)
	if r.Snaps.Driver() != snapshot.DriverOverlay {
		t.Skip("pipelined commits need the overlay snapshot driver")
	}
	dir := t.TempDir()
	df := "FROM scratch\nRUN first\nRUN second\n"
	res, out, err := tryBuild(r, dir, df, func(o *Options) { o.Executor = &fakeExecutor{} })
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The first RUN must run again; the second is still cached.
	if err := r.Records.Delete(res.Steps[1].Key); err != nil {
		t.Fatal(err)
	}
	r.Snaps = failingCommit{r.Snaps, new(atomic.Int32)}
	res, out, err = tryBuild(r, dir, df, func(o *Options) { o.Executor = &fakeExecutor{} })
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("build with a failing layer: %v (image %v)\n%s", err, res, out)
	}
	// The error names the step whose layer failed, not the step that
	// was running when it did.
	if !strings.Contains(err.Error(), "Dockerfile:2: storing the layer of #2 RUN /bin/sh -c first: ") {
		t.Errorf("error %q does not name the step whose layer failed\n%s", err, out)
	}
}

// A failing layer of an ONBUILD trigger is reported at the FROM that ran
// the trigger, not at a line of the trigger's own text.
func TestPipelinedFailedTriggerLayerNamesFrom(t *testing.T) {
	r := openRoot(t)
	if r.Snaps.Driver() != snapshot.DriverOverlay {
		t.Skip("pipelined commits need the overlay snapshot driver")
	}
	dir := t.TempDir()
	exec := func(o *Options) { o.Executor = &fakeExecutor{} }
	if _, out, err := tryBuild(r, dir, "FROM scratch\nONBUILD RUN first\n", exec, func(o *Options) { o.Tags = []string{"trig"} }); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	r.Snaps = failingCommit{r.Snaps, new(atomic.Int32)}
	_, out, err := tryBuild(r, dir, "# the base runs RUN first\nFROM trig\nRUN second\nRUN third\n", exec)
	if err == nil || !strings.Contains(err.Error(), "Dockerfile:2: storing the layer of #2 RUN /bin/sh -c first: ") {
		t.Fatalf("build with a failing trigger layer: %v, want it at the FROM (line 2)\n%s", err, out)
	}
	if strings.Count(err.Error(), "Dockerfile:") != 1 {
		t.Errorf("error %q names a place more than once", err)
	}
}

// A COPY whose memory snapshot fills up (its sources grew since they were
// hashed; here, a tmpfs made too small) is copied again on disk: the build
// succeeds with the same image.
func TestCopyMemoryFullFallsBackToDisk(t *testing.T) {
	r := openRoot(t)
	if !r.Snaps.Indexes() {
		t.Skip("no memory snapshots here")
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"big": strings.Repeat("x", 3<<20), "small": "s"})
	df := "FROM scratch\nCOPY . /data/\n"
	want, out, err := tryBuild(r, dir, df)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if n := indexedLayers(t, r); n != 1 {
		t.Fatalf("%d indexed layers after the COPY in memory, want 1", n)
	}
	r2 := openRoot(t)
	old := memoryHeadroom
	memoryHeadroom = -2 << 20 // 1 MiB of tmpfs for 3 MiB of sources
	defer func() { memoryHeadroom = old }()
	got, out, err := tryBuild(r2, dir, df)
	if err != nil {
		t.Fatalf("COPY into a full memory snapshot: %v\n%s", err, out)
	}
	if got.Image.ID != want.Image.ID {
		t.Errorf("image %s after the fallback, %s in memory", got.Image.ID, want.Image.ID)
	}
	if n := indexedLayers(t, r2); n != 0 {
		t.Errorf("%d indexed layers after the fallback, want 0 (copied on disk)", n)
	}
	assertNoActiveSnapshots(t, r2)
}
