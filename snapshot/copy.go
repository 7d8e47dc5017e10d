package snapshot

import (
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// The copy driver: Prepare materializes the parent chain into active/<id>/fs
// and records a manifest of what it made; Diff compares the tree to the
// manifest and, while writing the tar, unpacks it into active/<id>/layer in
// overlay form, which Commit renames into place.

// manifestEntry records one path as Prepare left it.
type manifestEntry struct {
	Ino   uint64
	Btime int64 // ns; 0 if the filesystem does not report birth times
	Ctime int64 // ns
	Mtime int64 // ns
	Mode  uint32
	Uid   uint32
	Gid   uint32
	Size  uint64
	Link  string // symlink target
}

// manifest maps paths relative to the view root ("a/b") to their entries.
type manifest map[string]manifestEntry

func statxNs(t unix.StatxTimestamp) int64 { return t.Sec*1e9 + int64(t.Nsec) }

func newManifestEntry(abs string, st *unix.Statx_t) (manifestEntry, error) {
	e := manifestEntry{Ino: st.Ino, Ctime: statxNs(st.Ctime), Mtime: statxNs(st.Mtime), Mode: uint32(st.Mode), Uid: st.Uid, Gid: st.Gid, Size: st.Size}
	if st.Mask&unix.STATX_BTIME != 0 {
		e.Btime = statxNs(st.Btime)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		var err error
		if e.Link, err = os.Readlink(abs); err != nil {
			return e, err
		}
	}
	return e, nil
}

// materialize applies the layers of refs (top first) bottom up into a.dir/fs
// and, for a writable snapshot, records the manifest.
func (s *snapshotter) materialize(ctx context.Context, a *active, refs []layerRef) (string, error) {
	root := filepath.Join(a.dir, "fs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", fmt.Errorf("create view: %w", err)
	}
	for i := len(refs) - 1; i >= 0; i-- {
		if err := copyLayer(ctx, refs[i].fs, root); err != nil {
			return "", fmt.Errorf("materialize %s: %w", refs[i].name, err)
		}
	}
	if a.ReadOnly {
		return root, nil
	}
	m := manifest{}
	if err := recordManifest(ctx, m, "", root); err != nil {
		return "", fmt.Errorf("record manifest: %w", err)
	}
	if err := saveManifest(filepath.Join(a.dir, "manifest"), m); err != nil {
		return "", err
	}
	a.manifest = m
	return root, nil
}

// copyLayer applies the overlay-form layer in dir onto the tree at root, by
// streaming it as a tar into the merging applier.
func copyLayer(ctx context.Context, dir, root string) error {
	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := writeUpperTar(ctx, dir, pw, false)
		pw.CloseWithError(err)
		werr <- err
	}()
	err := applyTar(ctx, root, pr, true)
	if err == nil {
		io.Copy(io.Discard, pr) // the tar trailer
	}
	pr.CloseWithError(errors.New("apply stopped"))
	if e := <-werr; err == nil {
		err = e
	}
	return err
}

func recordManifest(ctx context.Context, m manifest, rel, abs string) error {
	names, err := readDirNames(abs)
	if err != nil {
		return err
	}
	var st unix.Statx_t
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		crel, cabs := joinRel(rel, name), filepath.Join(abs, name)
		if err := lstatx(cabs, &st); err != nil {
			return err
		}
		e, err := newManifestEntry(cabs, &st)
		if err != nil {
			return err
		}
		m[crel] = e
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := recordManifest(ctx, m, crel, cabs); err != nil {
				return err
			}
		}
	}
	return nil
}

func saveManifest(p string, m manifest) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("save manifest: %w", err)
	}
	err = gob.NewEncoder(f).Encode(m)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("save manifest: %w", err)
	}
	return nil
}

func loadManifest(p string) (manifest, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	defer f.Close()
	m := manifest{}
	if err := gob.NewDecoder(f).Decode(&m); err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	return m, nil
}

// diffCopy writes a's changes to w and builds a.dir/layer from them.
// Times later than clamp (unless zero) are written as clamp, and the layer
// built from the tar gets them too.
func (s *snapshotter) diffCopy(ctx context.Context, a *active, w io.Writer, clamp time.Time) error {
	if a.manifest == nil {
		m, err := loadManifest(filepath.Join(a.dir, "manifest"))
		if err != nil {
			return err
		}
		a.manifest = m
	}
	layer := filepath.Join(a.dir, "layer")
	if err := os.RemoveAll(layer); err != nil {
		return err
	}
	if err := os.Mkdir(layer, 0o755); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	aerr := make(chan error, 1)
	go func() {
		err := applyTar(ctx, layer, pr, false)
		io.Copy(io.Discard, pr) // the tar trailer
		pr.CloseWithError(err)
		aerr <- err
	}()
	err := writeCopyTar(ctx, a.manifest, filepath.Join(a.dir, "fs"), io.MultiWriter(w, pw), false, clamp)
	pw.CloseWithError(err)
	if e := <-aerr; err == nil && e != nil {
		err = fmt.Errorf("build layer: %w", e)
	}
	if err != nil {
		return err
	}
	a.diffed = true
	return nil
}

type changeKind int

const (
	changeEntry changeKind = iota
	changeWhiteout
	changeOpaque
)

// change is one tar entry of a copy-driver diff.
type change struct {
	kind changeKind
	rel  string // entry, opaque: the path; whiteout: the directory
	name string // whiteout: the deleted name
	st   unix.Statx_t
}

// writeCopyTar writes the changes of the copy-driver tree at root against
// manifest m as a layer tar; with noData regular files are written without
// content. Each entry is written from the descriptor it was compared
// through (see node): the tree may be a running container's.
func writeCopyTar(ctx context.Context, m manifest, root string, out io.Writer, noData bool, clamp time.Time) error {
	w := newTarWriter(out, false)
	w.noData, w.clamp = noData, clamp
	err := walkCopy(ctx, m, root, func(c *change, n *node) error {
		switch c.kind {
		case changeWhiteout:
			return w.whiteout(c.rel, c.name)
		case changeOpaque:
			return w.opaque(c.rel)
		}
		_, err := w.entry(c.rel, n)
		return err
	})
	if err != nil {
		return err
	}
	if err := w.tw.Close(); err != nil {
		return fmt.Errorf("close tar: %w", err)
	}
	return nil
}

// listCopy returns the changes of the copy-driver tree at root against
// manifest m, in tar order.
func listCopy(ctx context.Context, m manifest, root string) ([]change, error) {
	var out []change
	err := walkCopy(ctx, m, root, func(c *change, _ *node) error {
		out = append(out, *c)
		return nil
	})
	return out, err
}

// walkCopy compares the copy-driver tree at root to manifest m and gives
// emit each change in tar order, with the open node of an entry (nil for a
// whiteout or opaque marker), valid during the call.
func walkCopy(ctx context.Context, m manifest, root string, emit func(*change, *node) error) error {
	d := &copyDiffer{ctx: ctx, m: m, children: map[string][]string{}, emit: emit}
	for p := range m {
		dir := filepath.Dir(p)
		if dir == "." {
			dir = ""
		}
		d.children[dir] = append(d.children[dir], filepath.Base(p))
	}
	rn, err := openTree(root)
	if err != nil {
		return err
	}
	defer rn.close()
	return d.dir(rn, false)
}

type copyDiffer struct {
	ctx      context.Context
	m        manifest
	children map[string][]string // manifest: directory -> names in it
	emit     func(*change, *node) error
	// pending are the directories on the way down that are unchanged
	// themselves: each goes out just before the first change below it.
	pending []pendingDir
}

type pendingDir struct {
	c change
	n *node
}

// out emits c (of node n, nil for a marker) after the pending directories.
func (d *copyDiffer) out(c change, n *node) error {
	for i := range d.pending {
		if err := d.emit(&d.pending[i].c, d.pending[i].n); err != nil {
			return err
		}
	}
	d.pending = d.pending[:0]
	return d.emit(&c, n)
}

// dir emits the changes below directory dir. With fresh, the directory is
// new or opaque: everything in it is a change.
func (d *copyDiffer) dir(dir *node, fresh bool) error {
	names, err := dir.names()
	if err != nil {
		return err
	}
	if !fresh {
		names = mergeNames(names, d.children[dir.rel])
	}
	for _, name := range names {
		if err := d.ctx.Err(); err != nil {
			return err
		}
		n, err := dir.open(name)
		if errors.Is(err, fs.ErrNotExist) {
			if fresh {
				continue // removed since the directory was read
			}
			if err := d.out(change{kind: changeWhiteout, rel: dir.rel, name: name}, nil); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		err = d.entry(n, fresh)
		n.close()
		if err != nil {
			return err
		}
	}
	return nil
}

// entry emits the changes of n and below it.
func (d *copyDiffer) entry(n *node, fresh bool) error {
	c := change{kind: changeEntry, rel: n.rel, st: n.st}
	old, had := d.m[n.rel]
	if fresh || !had || old.Mode&unix.S_IFMT != uint32(c.st.Mode)&unix.S_IFMT {
		// New, or a different type: the entry replaces whatever was below.
		if err := d.out(c, n); err != nil || !n.isDir() {
			return err
		}
		return d.dir(n, true)
	}
	if !n.isDir() {
		if changed(&old, &c.st) {
			return d.out(c, n)
		}
		return nil
	}
	if old.Ino != c.st.Ino || (old.Btime != 0 && c.st.Mask&unix.STATX_BTIME != 0 && old.Btime != statxNs(c.st.Btime)) {
		// Deleted and made anew: hide the lower contents.
		if err := d.out(c, n); err != nil {
			return err
		}
		if err := d.out(change{kind: changeOpaque, rel: c.rel}, nil); err != nil {
			return err
		}
		return d.dir(n, true)
	}
	if changed(&old, &c.st) {
		if err := d.out(c, n); err != nil {
			return err
		}
		return d.dir(n, false)
	}
	// Unchanged itself: it goes out only if something below changed.
	d.pending = append(d.pending, pendingDir{c, n})
	err := d.dir(n, false)
	if len(d.pending) > 0 { // not flushed: it is the last one
		d.pending = d.pending[:len(d.pending)-1]
	}
	return err
}

// changed reports whether a path differs from how Prepare left it. For a
// file any ctime change counts; for a directory only its own metadata and
// mtime do, since ctime also moves when an entry is created and removed
// again (a runtime's mount-point stub), which leaves the directory as it was.
func changed(old *manifestEntry, st *unix.Statx_t) bool {
	if st.Mode&unix.S_IFMT == unix.S_IFDIR && old.Mode == uint32(st.Mode) {
		return old.Ino != st.Ino || old.Mtime != statxNs(st.Mtime) || old.Uid != st.Uid || old.Gid != st.Gid
	}
	return old.Ino != st.Ino || old.Ctime != statxNs(st.Ctime) || old.Mode != uint32(st.Mode) ||
		old.Uid != st.Uid || old.Gid != st.Gid || old.Size != st.Size
}

// mergeNames returns the sorted union of sorted a and unsorted b.
func mergeNames(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	seen := make(map[string]bool, len(a)+len(b))
	out := make([]string, 0, len(a)+len(b))
	for _, n := range a {
		seen[n] = true
		out = append(out, n)
	}
	added := false
	for _, n := range b {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
			added = true
		}
	}
	if added {
		sort.Strings(out)
	}
	return out
}
