package builder

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/snapshot"
	"github.com/lbuild/lbuild/store"
	"github.com/lbuild/lbuild/system"
)

// ErrNotReproducible is returned (wrapped) by CheckReproducible when the
// second build gives another image.
var ErrNotReproducible = errors.New("build is not reproducible")

// CheckReproducible builds opts a second time, without the cache, and
// compares the image with first (the result of Build(ctx, r, opts)). The
// second build runs in a scratch area under r.Dir with its own snapshots,
// cache records and RUN state, which it removes when done; it shares r's
// image store, so base images need no pull, and if it gives another image
// that image is removed from the store's index again (its blobs stay until
// GC). opts.Tags are not applied. The second build starts at least a
// second after the first ended, so that a step writing the time in seconds
// writes another one.
//
// A difference is an error wrapping ErrNotReproducible naming the first
// layer that differs, the step that made it and the first path in it that
// differs, and what to fix. opts.SourceDateEpoch "now" is an error before
// anything is built: wall-clock times cannot repeat.
func CheckReproducible(ctx context.Context, r *system.Root, opts Options, first *Result) error {
	if strings.TrimSpace(opts.epochSpec()) == EpochNow {
		return fmt.Errorf("--check-reproducible needs a fixed build time: drop --source-date-epoch %s", EpochNow)
	}
	// The second build takes the first's time, whatever git says meanwhile.
	opts.SourceDateEpoch = strconv.FormatInt(first.Image.Config.Created.Unix(), 10)
	opts.NoCache, opts.Tags = true, nil

	dir, err := os.MkdirTemp(r.Dir, "check-")
	if err != nil {
		return fmt.Errorf("scratch area: %w", err)
	}
	defer os.RemoveAll(dir)
	recs, err := cache.OpenRecords(filepath.Join(dir, "cache", "records"))
	if err != nil {
		return err
	}
	snaps, err := snapshot.New(filepath.Join(dir, "snapshots"), r.Snaps.Driver())
	if err != nil {
		return err
	}
	scratch := &system.Root{Dir: dir, Store: r.Store, Records: recs, Snaps: snaps}
	// Every step of the second build runs at least a second after the
	// first build ended, so a RUN that writes the time in seconds (date)
	// writes another one.
	if d := time.Until(first.finished.Add(time.Second)); !first.finished.IsZero() && d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// The second build's blobs go to the shared store: hold the real root
	// against prune, not only the scratch area.
	release, err := r.Lease()
	if err != nil {
		return err
	}
	defer release()
	existed := map[v1.Hash]bool{}
	if imgs, err := r.Store.Images(); err == nil {
		for _, img := range imgs {
			existed[img.Manifest.Digest] = true
		}
	}
	second, err := Build(ctx, scratch, opts)
	if err != nil {
		return fmt.Errorf("second build: %w", err)
	}
	if second.Image.Manifest.Digest == first.Image.Manifest.Digest {
		return nil
	}
	// Only an image the second build added, untagged, goes: it may be an
	// image the user had already (an earlier build's, under a tag).
	if !existed[second.Image.Manifest.Digest] && len(second.Image.Refs) == 0 {
		defer func() {
			if err := r.Store.Remove(second.Image); err != nil && !errors.Is(err, store.ErrNotFound) {
				logrus.Warnf("remove the second build's image: %v", err)
			}
		}()
	}
	return fmt.Errorf("%w: %s", ErrNotReproducible, explainDifference(r.Store, first, second))
}

// explainDifference says where two builds' images first differ.
func explainDifference(st *store.Store, a, b *Result) string {
	da, db := a.Image.Config.RootFS.DiffIDs, b.Image.Config.RootFS.DiffIDs
	if len(da) != len(db) {
		return fmt.Sprintf("the builds made %d and %d layers", len(da), len(db))
	}
	chains := system.ChainIDs(da)
	for i := range da {
		if da[i] == db[i] {
			continue
		}
		step := stepOf(a, chains[i])
		where := fmt.Sprintf("layer %d of %d", i+1, len(da))
		if step != nil {
			where += fmt.Sprintf(", made by %q", step.Text)
		}
		path, what, err := firstTarDifference(st, da[i], db[i])
		if err != nil {
			return fmt.Sprintf("%s, differs (%s vs %s; comparing them: %v)", where, da[i], db[i], err)
		}
		fix := "make the step write the same bytes every time (no dates, random values, or host names in files)"
		if what != "content" && what != "only in one build" {
			fix = "make the step set the same metadata every time"
		}
		if step != nil && step.Cached {
			fix += " (the first build took this step from the cache: if it was built by an older lbuild, --no-cache rebuilds it)"
		}
		return fmt.Sprintf("%s, differs at /%s (%s): %s", where, path, what, fix)
	}
	return fmt.Sprintf("the layers are the same but the image configs differ (%s vs %s)", a.Image.ID, b.Image.ID)
}

// stepOf finds the step of a build that left the stack at chain.
func stepOf(res *Result, chain string) *StepResult {
	for i := range res.Steps {
		if s := &res.Steps[i]; s.DiffID != "" && s.ChainID == chain {
			return s
		}
	}
	return nil
}

// tarFile is what firstTarDifference compares of one entry.
type tarFile struct {
	typ      byte
	mode     int64
	uid, gid int
	mtime    time.Time
	link     string
	sum      [32]byte
	xattrs   string
	devs     [2]int64
}

// firstTarDifference returns the first path (in the order of layer a) whose
// entry differs between the uncompressed layer blobs a and b, and what
// differs about it.
func firstTarDifference(st *store.Store, a, b v1.Hash) (string, string, error) {
	fa, orderA, err := readLayerFiles(st, a)
	if err != nil {
		return "", "", err
	}
	fb, orderB, err := readLayerFiles(st, b)
	if err != nil {
		return "", "", err
	}
	for _, name := range append(orderA, orderB...) {
		x, okA := fa[name]
		y, okB := fb[name]
		if !okA || !okB {
			return name, "only in one build", nil
		}
		switch {
		case x.sum != y.sum:
			return name, "content", nil
		case x.typ != y.typ:
			return name, "file type", nil
		case x.link != y.link:
			return name, fmt.Sprintf("link target %q vs %q", x.link, y.link), nil
		case x.mode != y.mode:
			return name, fmt.Sprintf("mode %o vs %o", x.mode, y.mode), nil
		case x.uid != y.uid || x.gid != y.gid:
			return name, fmt.Sprintf("owner %d:%d vs %d:%d", x.uid, x.gid, y.uid, y.gid), nil
		case !x.mtime.Equal(y.mtime):
			return name, fmt.Sprintf("mtime %s vs %s", x.mtime.UTC().Format(time.RFC3339), y.mtime.UTC().Format(time.RFC3339)), nil
		case x.xattrs != y.xattrs:
			return name, "extended attributes", nil
		case x.devs != y.devs:
			return name, "device numbers", nil
		}
	}
	return "", "the same entries in other tar bytes", nil
}

func readLayerFiles(st *store.Store, h v1.Hash) (map[string]tarFile, []string, error) {
	rc, err := st.OpenBlob(h)
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]tarFile{}
	var order []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, order, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read layer %s: %w", h, err)
		}
		hs := sha256.New()
		if _, err := io.Copy(hs, tr); err != nil {
			return nil, nil, fmt.Errorf("read layer %s: %w", h, err)
		}
		var xattrs []string
		for k, v := range hdr.PAXRecords {
			xattrs = append(xattrs, k+"="+v)
		}
		sort.Strings(xattrs)
		f := tarFile{typ: hdr.Typeflag, mode: hdr.Mode, uid: hdr.Uid, gid: hdr.Gid, mtime: hdr.ModTime,
			link: hdr.Linkname, xattrs: strings.Join(xattrs, "\x00"), devs: [2]int64{hdr.Devmajor, hdr.Devminor}}
		copy(f.sum[:], hs.Sum(nil))
		name := filepath.Clean("/" + hdr.Name)[1:]
		files[name] = f
		order = append(order, name)
	}
}
