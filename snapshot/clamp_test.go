package snapshot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// epoch lies between t0 (the base layer's times) and t1 (what mutate sets).
var epoch = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)

// clampOnce runs the diff scenario with a clamp time, plus a file written
// now and one older than the clamp, and returns the tar and the fs dir of
// the committed layer.
func clampOnce(t *testing.T, driver string) ([]byte, string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "k", base)
	check(t, err)
	mutate(t, v)
	check(t, os.MkdirAll(filepath.Join(v, "fresh/sub"), 0o755))
	mustWrite(t, filepath.Join(v, "fresh/sub/now.txt"), "now", 0o644)
	mustWrite(t, filepath.Join(v, "old.txt"), "old", 0o644)
	lutimes(t, filepath.Join(v, "old.txt"), t0)
	var buf bytes.Buffer
	check(t, s.Diff(ctx, "k", &buf, WithSourceDateEpoch(epoch)))
	name := ChainID(base, diffID(buf.Bytes()))
	check(t, s.Commit(ctx, name, "k"))
	return buf.Bytes(), layerFS(t, s, name)
}

// TestDiffSourceDateEpoch checks that Diff WithSourceDateEpoch writes no
// time later than the clamp, keeps earlier ones, commits a layer whose files
// carry the times its tar says, and that both drivers write the same bytes.
func TestDiffSourceDateEpoch(t *testing.T) {
	requireRoot(t)
	tars := map[string][]byte{}
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) {
			b, fs := clampOnce(t, d)
			tars[d] = b
			es := readTar(t, b)
			if len(es) == 0 {
				t.Fatal("empty diff")
			}
			for _, e := range es {
				switch {
				case e.ModTime.After(epoch):
					t.Errorf("%s: mtime %s is later than the clamp %s", e.Name, e.ModTime.UTC(), epoch)
				case e.Name == "old.txt" && !e.ModTime.Equal(t0):
					t.Errorf("old.txt: mtime %s, want its own %s", e.ModTime.UTC(), t0)
				case e.Name == "new.txt" && !e.ModTime.Equal(epoch):
					t.Errorf("new.txt: mtime %s, want the clamp %s", e.ModTime.UTC(), epoch)
				}
				if strings.HasPrefix(filepath.Base(e.Name), whiteoutPrefix) {
					continue // overlay form has a device or an xattr there
				}
				var st unix.Stat_t
				check(t, unix.Lstat(filepath.Join(fs, e.Name), &st))
				if got := time.Unix(st.Mtim.Unix()); !got.Truncate(time.Second).Equal(e.ModTime) && !got.Round(time.Second).Equal(e.ModTime) {
					t.Errorf("%s: committed layer has mtime %s, its tar %s", e.Name, got.UTC(), e.ModTime.UTC())
				}
			}
		})
	}
	if a, b := tars[DriverOverlay], tars[DriverCopy]; a != nil && b != nil && !bytes.Equal(a, b) {
		ea, eb := readTar(t, a), readTar(t, b)
		for i := range min(len(ea), len(eb)) {
			if !reflect.DeepEqual(ea[i], eb[i]) {
				t.Errorf("entry %d differs:\noverlay %+v\n   copy %+v", i, ea[i], eb[i])
			}
		}
		t.Fatalf("overlay and copy drivers disagree (%d vs %d entries)", len(ea), len(eb))
	}
}
