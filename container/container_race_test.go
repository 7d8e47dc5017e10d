package container

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/builder"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/system"
)

// swapFiles is how many files the racing container keeps in its swapped
// directory (and the host directory holds under the same names): reading
// them takes long enough for the swap to land in the middle.
const swapFiles = 200

// swapperImage builds, as tag, the busybox base with /swapper, the racing
// program of testdata/swapper (built here, static).
func swapperImage(t *testing.T, r *testRoot, tag string) {
	t.Helper()
	needRunc(t)
	withBusybox(t, r)
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir := t.TempDir()
	cmd := exec.Command(goTool, "build", "-o", filepath.Join(dir, "swapper"), "./testdata/swapper")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build swapper: %v\n%s", err, out)
	}
	mustBuild(t, r, dir, "FROM local/busybox\nCOPY swapper /swapper\n", func(o *builder.Options) { o.Tags = []string{tag} })
}

// TestCommitDiffSymlinkSwapRace races commit and diff against a container
// that keeps replacing a directory of its layer with a symlink to a host
// directory (docker's CVE-2018-15664): no committed layer and no diff may
// ever hold the host directory's content or names, each commit and diff of
// the running container either succeeds or fails with one error line, and a
// commit that pauses the container succeeds and leaves it running.
func TestCommitDiffSymlinkSwapRace(t *testing.T) {
	for _, d := range []string{snapshot.DriverOverlay, snapshot.DriverCopy} {
		t.Run(d, func(t *testing.T) { testSymlinkSwapRace(t, d) })
	}
}

func testSymlinkSwapRace(t *testing.T, driver string) {
	ctx := context.Background()
	sr, err := system.Open(t.TempDir(), system.WithSnapshotter(driver))
	if err != nil {
		t.Fatal(err)
	}
	if err := Recover(ctx, sr); err != nil {
		t.Fatal(err)
	}
	r := &testRoot{New(sr), sr}
	if driver == snapshot.DriverOverlay {
		if auto, err := snapshot.New(t.TempDir(), snapshot.DriverAuto); err != nil || auto.Driver() != snapshot.DriverOverlay {
			t.Skip("overlay not usable here")
		}
	}
	swapperImage(t, r, "img")

	secret := make([]byte, 16)
	rand.Read(secret)
	marker := "host-secret-" + hex.EncodeToString(secret)
	host := filepath.Join(t.TempDir(), "host")
	files := map[string]string{"hostonly": marker}
	for i := range swapFiles {
		files[fmt.Sprintf("f%d", i)] = marker
	}
	writeFiles(t, host, files)

	c := create(t, r, Options{Image: "img", Cmd: []string{"/swapper", host, strconv.Itoa(swapFiles)}})
	done := startBG(t, r, c)
	for deadline := time.Now().Add(30 * time.Second); !ready(ctx, r, c); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the container did not get ready")
		}
	}

	// Each round: a commit of the running container (the reader races the
	// swap), a commit that pauses it (the default: nothing races, so it
	// must succeed with one state of the container, which must run on),
	// and a diff.
	rt, err := r.runtime(c)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 50
	var commitOK, commitFail, diffOK, diffFail, pauseFailed int
	for i := range rounds {
		img, err := r.Commit(ctx, c.ID, "", CommitOptions{NoPause: true})
		if err != nil {
			commitFail++
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("commit %d: error of more than one line: %q", i, err)
			}
			t.Logf("commit %d: %v", i, err)
		} else {
			commitOK++
			ids := img.Config.RootFS.DiffIDs
			if leak := layerLeak(t, r, ids[len(ids)-1], marker); leak != "" {
				t.Errorf("commit %d: the committed layer holds host content: %s", i, leak)
			}
		}

		img, err = r.Commit(ctx, c.ID, "", CommitOptions{})
		if err != nil {
			// Freezing may fail on a loaded machine (the container is
			// renaming all the time): that is a clean failure, allowed
			// now and then; anything else is not.
			if !strings.Contains(err.Error(), "pause container") || strings.Contains(err.Error(), "\n") {
				t.Errorf("paused commit %d: %v", i, err)
			}
			pauseFailed++
			t.Logf("paused commit %d: %v", i, err)
		} else {
			ids := img.Config.RootFS.DiffIDs
			if leak := layerLeak(t, r, ids[len(ids)-1], marker); leak != "" {
				t.Errorf("paused commit %d: the committed layer holds host content: %s", i, leak)
			}
			if bad := swapState(t, r, ids[len(ids)-1]); bad != "" {
				t.Errorf("paused commit %d: the layer is no one state of the container: %s", i, bad)
			}
		}
		if st, err := rt.State(ctx, c.ID); err != nil || st.Status != "running" {
			t.Fatalf("after paused commit %d: container state %+v, %v", i, st, err)
		}

		changes, err := r.Changes(ctx, c.ID)
		if err != nil {
			diffFail++
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("diff %d: error of more than one line: %q", i, err)
			}
			t.Logf("diff %d: %v", i, err)
			continue
		}
		diffOK++
		for _, ch := range changes {
			if strings.Contains(ch.Path, "hostonly") {
				t.Errorf("diff %d lists the host file %s", i, ch)
			}
		}
	}
	t.Logf("%s: running commits %d ok, %d failed; diffs %d ok, %d failed; %d paused commits could not freeze", driver, commitOK, commitFail, diffOK, diffFail, pauseFailed)
	if pauseFailed > rounds/5 {
		t.Errorf("%d of %d paused commits could not freeze the container", pauseFailed, rounds)
	}
	if commitOK == 0 || diffOK == 0 {
		t.Errorf("no commit or no diff succeeded: nothing was checked")
	}

	if err := r.Stop(ctx, c.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	<-done
}

// ready reports whether the swapper in c has made /ready.
func ready(ctx context.Context, r *testRoot, c *Container) bool {
	changes, err := r.Changes(ctx, c.ID)
	return err == nil && slices.Contains(changes, snapshot.Change{Kind: snapshot.ChangeAdd, Path: "/ready"})
}

// layerLeak returns what of the host directory the layer diffID holds: an
// entry named after a host-only file or the marker in some content; "" if
// nothing.
func layerLeak(t *testing.T, r *testRoot, diffID v1.Hash, marker string) string {
	t.Helper()
	leak, _ := readSwapLayer(t, r, diffID, marker)
	return leak
}

// swapState describes the swapper's two names in a committed layer: one
// must be the directory with all its files and the other the symlink,
// as at any one moment in the container; "" if so.
func swapState(t *testing.T, r *testRoot, diffID v1.Hash) string {
	t.Helper()
	_, types := readSwapLayer(t, r, diffID, "")
	files := map[string]int{}
	for name, typ := range types {
		if dir, base, ok := strings.Cut(name, "/"); ok && typ == tar.TypeReg && !strings.HasPrefix(base, ".wh.") {
			files[dir]++
		}
	}
	for _, pair := range [][2]string{{"d", "d.lnk"}, {"d.lnk", "d"}} {
		dir, link := pair[0], pair[1]
		if types[dir+"/"] == tar.TypeDir && files[dir] == swapFiles && types[link] == tar.TypeSymlink && files[link] == 0 {
			return ""
		}
	}
	return fmt.Sprintf("d: %q (%d files), d.lnk: %q (%d files)",
		string(types["d"])+string(types["d/"]), files["d"], string(types["d.lnk"])+string(types["d.lnk/"]), files["d.lnk"])
}

// readSwapLayer reads the layer diffID: what of the host it holds (see
// layerLeak; marker "" checks nothing) and the type of each entry.
func readSwapLayer(t *testing.T, r *testRoot, diffID v1.Hash, marker string) (leak string, types map[string]byte) {
	t.Helper()
	rc, err := r.Store.OpenBlob(diffID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	types = map[string]byte{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return leak, types
		}
		if err != nil {
			t.Fatal(err)
		}
		types[hdr.Name] = hdr.Typeflag
		if marker == "" || leak != "" {
			continue
		}
		if strings.Contains(hdr.Name, "hostonly") {
			leak = "entry " + hdr.Name
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(marker)) {
			leak = "the content of " + hdr.Name
		}
	}
}
