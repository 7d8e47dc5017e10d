package builder

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/system"
)

// reproDockerfile has what makes layers differ between machines: two
// stages, COPY into parent directories that do not exist yet, a RUN that
// creates files, directories and a symlink, WORKDIR and ENV.
const reproDockerfile = `FROM local/busybox AS build
WORKDIR /work/deep
COPY src/ /opt/app/src/
RUN mkdir -p out/sub && echo hi > out/sub/f && ln -s sub/f out/link && touch out/empty && cp /opt/app/src/main.txt out/
FROM local/busybox
ENV APP=/opt/app
COPY --from=build /work/deep/out /opt/app/out/
COPY cfg.txt /etc/app/nested/cfg.txt
WORKDIR /srv/www
RUN echo done > marker && mkdir -p cache/x
`

// reproContext writes the context into a new directory, giving every file
// and directory the time stamp.
func reproContext(t *testing.T, stamp time.Time) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"Dockerfile":      reproDockerfile,
		"src/main.txt":    "main\n",
		"src/lib/util.sh": "echo util\n",
		"cfg.txt":         "k=v\n",
	})
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(p, stamp, stamp)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// latestLayerTime returns the latest mtime in the image's layers and the
// path that has it.
func latestLayerTime(t *testing.T, r *system.Root, diffIDs []v1.Hash) (time.Time, string) {
	t.Helper()
	var latest time.Time
	var where string
	for _, d := range diffIDs {
		rc, err := r.Store.OpenBlob(d)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.ModTime.After(latest) || where == "" {
				latest, where = h.ModTime, h.Name
			}
			if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || h.Uname != "" || h.Gname != "" {
				t.Errorf("%s: header carries atime/ctime or user names: %+v", h.Name, h)
			}
		}
		rc.Close()
	}
	return latest, where
}

// TestReproducibleByDefault builds the same Dockerfile from two copies of
// its context, written at different times, in two store roots, one after
// the other: the images and every layer and cache key are the same, and
// nothing in them is later than the default build time, 1970-01-01.
func TestReproducibleByDefault(t *testing.T) {
	var results []*Result
	var roots []*system.Root
	for i, stamp := range []time.Time{time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC), time.Now()} {
		if i > 0 {
			time.Sleep(1100 * time.Millisecond) // the RUN steps write at another second
		}
		r := openRoot(t)
		withBusybox(t, r)
		res, _ := mustBuild(t, r, reproContext(t, stamp), "")
		results, roots = append(results, res), append(roots, r)
	}
	a, b := results[0], results[1]
	if a.Image.ID != b.Image.ID || a.Image.Manifest.Digest != b.Image.Manifest.Digest {
		t.Errorf("image IDs differ: %s vs %s", a.Image.ID, b.Image.ID)
	}
	da, db := a.Image.Config.RootFS.DiffIDs, b.Image.Config.RootFS.DiffIDs
	if len(da) != len(db) {
		t.Fatalf("layer counts differ: %d vs %d", len(da), len(db))
	}
	for i := range da {
		if da[i] != db[i] {
			path, what, err := crossTarDifference(t, roots, da[i], db[i])
			t.Errorf("layer %d differs: %s vs %s (/%s: %s %v)", i, da[i], db[i], path, what, err)
		}
	}
	if len(a.Steps) != len(b.Steps) {
		t.Fatalf("step counts differ")
	}
	for i := range a.Steps {
		if a.Steps[i].Key != b.Steps[i].Key {
			t.Errorf("step %q: cache keys differ between the two contexts and roots: %s vs %s", a.Steps[i].Text, a.Steps[i].Key, b.Steps[i].Key)
		}
	}
	cfg := a.Image.Config
	if !cfg.Created.Time.Equal(time.Unix(0, 0)) {
		t.Errorf("config created %s, want 1970-01-01", cfg.Created.Time)
	}
	for _, h := range cfg.History {
		if !h.Created.Time.Equal(time.Unix(0, 0)) {
			t.Errorf("history %q created %s, want 1970-01-01", h.CreatedBy, h.Created.Time)
		}
	}
	if latest, where := latestLayerTime(t, roots[0], da); latest.After(time.Unix(0, 0)) {
		t.Errorf("%s has mtime %s, later than the build time 1970-01-01", where, latest.UTC())
	}
}

// crossTarDifference compares layer a of the first root with layer b of
// the second.
func crossTarDifference(t *testing.T, roots []*system.Root, a, b v1.Hash) (string, string, error) {
	rc, err := roots[1].Store.OpenBlob(b)
	if err != nil {
		return "", "", err
	}
	defer rc.Close()
	if _, _, err := roots[0].Store.PutBlob(rc); err != nil {
		return "", "", err
	}
	return firstTarDifference(roots[0].Store, a, b)
}

// TestSourceDateEpoch: with a fixed build time the config and every
// history entry this build writes carry it, base entries keep theirs, and
// no file in any layer is later.
func TestSourceDateEpoch(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	epoch := time.Unix(1700000000, 0)
	res, _ := mustBuild(t, r, reproContext(t, time.Now()), "", func(o *Options) { o.SourceDateEpoch = "1700000000" })
	cfg := res.Image.Config
	if !cfg.Created.Time.Equal(epoch) {
		t.Errorf("config created %s, want %s", cfg.Created.Time.UTC(), epoch.UTC())
	}
	base, err := r.Store.Resolve("local/busybox")
	if err != nil {
		t.Fatal(err)
	}
	nb := len(base.Config.History)
	for i, h := range cfg.History {
		want := epoch
		if i < nb {
			want = base.Config.History[i].Created.Time // the base's history stays
		}
		if !h.Created.Time.Equal(want) {
			t.Errorf("history %d %q created %s, want %s", i, h.CreatedBy, h.Created.Time.UTC(), want.UTC())
		}
	}
	if len(cfg.History) <= nb {
		t.Fatalf("no history entries of this build")
	}
	latest, where := latestLayerTime(t, r, cfg.RootFS.DiffIDs)
	if latest.After(epoch) {
		t.Errorf("%s has mtime %s, later than the build time %s", where, latest.UTC(), epoch.UTC())
	}
	if !latest.Equal(epoch) {
		t.Errorf("latest mtime %s (%s), want files written now clamped to %s", latest.UTC(), where, epoch.UTC())
	}

	// A fully cached rebuild with the same time is the same image.
	again, _ := mustBuild(t, r, reproContext(t, time.Now()), "", func(o *Options) { o.SourceDateEpoch = "1700000000" })
	if again.Image.ID != res.Image.ID {
		t.Errorf("cached rebuild: image %s, want %s", again.Image.ID, res.Image.ID)
	}

	// "now" restores wall-clock times.
	before := time.Now().Add(-time.Second)
	now, _ := mustBuild(t, r, t.TempDir(), "FROM local/busybox\nRUN echo x > /x\n", func(o *Options) { o.SourceDateEpoch = EpochNow; o.NoCache = true })
	if c := now.Image.Config.Created.Time; c.Before(before) {
		t.Errorf("--source-date-epoch now: created %s, want the wall clock (after %s)", c.UTC(), before.UTC())
	}

	_, _, err = tryBuild(r, t.TempDir(), "FROM local/busybox\n", func(o *Options) { o.SourceDateEpoch = "yesterday" })
	if err == nil || !strings.Contains(err.Error(), "not a build time") {
		t.Errorf("bad epoch: %v", err)
	}
}

// TestGitCommitTime: a context in a git work tree takes HEAD's commit time.
func TestGitCommitTime(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed (hack/deps.sh installs it)")
	}
	r := openRoot(t)
	withBusybox(t, r)
	dir := reproContext(t, time.Now())
	commit := time.Unix(1650000000, 0)
	for _, args := range [][]string{
		{"init", "-q"},
		{"add", "."},
		{"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "x"},
	} {
		cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_COMMITTER_DATE=@1650000000 +0000", "GIT_AUTHOR_DATE=@1600000000 +0000")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	res, _ := mustBuild(t, r, dir, "")
	cfg := res.Image.Config
	if !cfg.Created.Time.Equal(commit) {
		t.Errorf("config created %s, want the commit time %s", cfg.Created.Time.UTC(), commit.UTC())
	}
	if latest, where := latestLayerTime(t, r, cfg.RootFS.DiffIDs); latest.After(commit) {
		t.Errorf("%s has mtime %s, later than the commit time", where, latest.UTC())
	}
}

// TestSourceDateEpochArg: ARG SOURCE_DATE_EPOCH gets the build time, and
// --build-arg SOURCE_DATE_EPOCH (docker buildx's spelling) sets it.
func TestSourceDateEpochArg(t *testing.T) {
	r := openRoot(t)
	df := "FROM scratch\nARG SOURCE_DATE_EPOCH\nENV BUILT=${SOURCE_DATE_EPOCH}\n"
	res, _ := mustBuild(t, r, t.TempDir(), df, func(o *Options) { o.SourceDateEpoch = "1700000000" })
	if env := res.Image.Config.Config.Env; !slices.Contains(env, "BUILT=1700000000") {
		t.Errorf("env %q, want BUILT=1700000000", env)
	}
	res, _ = mustBuild(t, r, t.TempDir(), df, func(o *Options) { o.BuildArgs = map[string]string{"SOURCE_DATE_EPOCH": "1600000000"} })
	if c := res.Image.Config.Created.Time; !c.Equal(time.Unix(1600000000, 0)) {
		t.Errorf("--build-arg SOURCE_DATE_EPOCH=1600000000: created %s", c.UTC())
	}
	if env := res.Image.Config.Config.Env; !slices.Contains(env, "BUILT=1600000000") {
		t.Errorf("env %q, want BUILT=1600000000", env)
	}
}

// TestReproducibleAcrossDrivers: the overlay and the copy snapshot drivers
// build the same image.
func TestReproducibleAcrossDrivers(t *testing.T) {
	var ids []string
	var roots []*system.Root
	for _, driver := range []string{"overlay", "copy"} {
		r, err := system.Open(t.TempDir(), system.WithSnapshotter(driver))
		if err != nil {
			t.Skipf("%s driver: %v", driver, err)
		}
		withBusybox(t, r)
		res, _ := mustBuild(t, r, reproContext(t, time.Now()), "")
		ids, roots = append(ids, res.Image.ID.String()), append(roots, r)
		if driver == "copy" && ids[0] != ids[1] {
			a, _ := roots[0].Store.Resolve(ids[0])
			da, db := a.Config.RootFS.DiffIDs, res.Image.Config.RootFS.DiffIDs
			for i := range min(len(da), len(db)) {
				if da[i] != db[i] {
					path, what, err := crossTarDifference(t, roots, da[i], db[i])
					t.Errorf("layer %d differs between the drivers: /%s: %s %v", i, path, what, err)
				}
			}
			t.Fatalf("overlay built %s, copy %s", ids[0], ids[1])
		}
	}
}

// TestCacheBuiltLater: a layer cached by a build at a later time (or with
// wall-clock times) is rebuilt, so no file in the image is later than the
// build time; one cached at the same or an earlier time is reused.
func TestCacheBuiltLater(t *testing.T) {
	r := openRoot(t)
	withBusybox(t, r)
	dir := reproContext(t, time.Now())
	build := func(epoch string) *Result {
		res, _ := mustBuild(t, r, dir, "", func(o *Options) { o.SourceDateEpoch = epoch })
		return res
	}
	allCached := func(res *Result) bool {
		return !slices.Contains(cachedFlags(res), false)
	}
	build(EpochNow)
	res := build("1700000000")
	if allCached(res) {
		t.Errorf("layers built with wall-clock times were reused: %v", cachedFlags(res))
	}
	if latest, where := latestLayerTime(t, r, res.Image.Config.RootFS.DiffIDs); latest.After(time.Unix(1700000000, 0)) {
		t.Errorf("%s has mtime %s, later than the build time", where, latest.UTC())
	}
	if res := build("1800000000"); !allCached(res) {
		t.Errorf("a later build time missed the cache: %v", cachedFlags(res))
	}
	if res := build("1700000000"); !allCached(res) {
		t.Errorf("the same build time missed the cache: %v", cachedFlags(res))
	}
	res = build("1600000000")
	if latest, where := latestLayerTime(t, r, res.Image.Config.RootFS.DiffIDs); latest.After(time.Unix(1600000000, 0)) {
		t.Errorf("an earlier build time reused a later layer: %s has mtime %s", where, latest.UTC())
	}
}
