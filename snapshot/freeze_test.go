package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// clampAt is the build time the freeze tests clamp layers to: the base
// layer's time, as when the base was built with the same build time.
var clampAt = t0

// stepChanges is one build step's changes: a new file, a changed one, a
// deletion, and a copied-up directory whose only change is its mtime (a
// file made and removed in it), which the clamp makes no change at all.
func stepChanges(t *testing.T, v string) {
	mustWrite(t, filepath.Join(v, "new.txt"), "new", 0o644)
	mustWrite(t, filepath.Join(v, "keep.txt"), "changed", 0o644)
	check(t, os.Remove(filepath.Join(v, "del.txt")))
	stub := filepath.Join(v, "dir", "sub", "stub")
	check(t, os.WriteFile(stub, nil, 0o644))
	check(t, os.Remove(stub))
}

// serialLayer is the tar one step gives the usual way (Prepare, change,
// Diff), on a fresh store.
func serialLayer(t *testing.T) []byte {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, DriverOverlay)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "k", base)
	check(t, err)
	stepChanges(t, v)
	var buf bytes.Buffer
	check(t, s.Diff(ctx, "k", &buf, WithSourceDateEpoch(clampAt)))
	check(t, s.Remove(ctx, "k"))
	return buf.Bytes()
}

// frozenStack makes step k1 over base (stepChanges), freezes it, and
// returns the view of step k2 stacked on it.
func frozenStack(t *testing.T, s *snapshotter, base string) string {
	t.Helper()
	ctx := context.Background()
	v1, err := s.Prepare(ctx, "k1", base)
	check(t, err)
	stepChanges(t, v1)
	check(t, s.Freeze(ctx, "k1", WithSourceDateEpoch(clampAt)))
	v2, err := s.Prepare(ctx, "k2", "", OverFrozen("k1"))
	check(t, err)
	return v2
}

// A step stacked on a frozen one runs while the frozen one's tar is written
// and committed, and both layers are what Prepare-Diff-Commit one after the
// other gives.
func TestFreezeThenStack(t *testing.T) {
	ctx := context.Background()
	want := serialLayer(t)
	if got := names(readTar(t, want)); strings.Join(got, " ") != ".wh.del.txt keep.txt new.txt" {
		t.Fatalf("serial diff = %q: the clamped, copied-up dir/sub should be no change", got)
	}

	s, _ := newTestSnapshotter(t, DriverOverlay)
	base := applyBase(t, s)
	// The next step sees the frozen one's files and changes its own view.
	v2 := frozenStack(t, s, base)
	if got := mustRead(t, filepath.Join(v2, "keep.txt")); got != "changed" {
		t.Fatalf("keep.txt over the frozen step = %q", got)
	}
	if exists(filepath.Join(v2, "del.txt")) {
		t.Fatal("del.txt, deleted by the frozen step, is visible over it")
	}
	mustWrite(t, filepath.Join(v2, "second.txt"), "2", 0o644)

	// Meanwhile the frozen step's layer is written and committed.
	var l1 bytes.Buffer
	check(t, s.Diff(ctx, "k1", &l1, WithSourceDateEpoch(clampAt)))
	if !bytes.Equal(l1.Bytes(), want) {
		t.Fatalf("frozen step's layer differs from the serial one:\n got %q\nwant %q", names(readTar(t, l1.Bytes())), names(readTar(t, want)))
	}
	if err := s.Commit(ctx, "sha256:"+strings.Repeat("2", 64), "k2"); err == nil {
		t.Fatal("a step committed before the step it stands on")
	}
	if err := s.Remove(ctx, "k1"); err == nil {
		t.Fatal("Remove of a frozen step while a step stacked on it is mounted succeeded")
	}
	n1 := ChainID(base, diffID(l1.Bytes()))
	check(t, s.Commit(ctx, n1, "k1"))

	// A step stacked on k1 just after its commit stands on the committed layer.
	v3, err := s.Prepare(ctx, "k3", "", OverFrozen("k1"))
	check(t, err)
	if got := mustRead(t, filepath.Join(v3, "new.txt")); got != "new" {
		t.Fatalf("new.txt over the committed step = %q", got)
	}
	if a, err := s.lookup("k3"); err != nil || a.Parent != n1 || a.ParentKey != "" {
		t.Fatalf("step stacked on a committed one: parent %q, parent key %q, %v", a.Parent, a.ParentKey, err)
	}
	check(t, s.Remove(ctx, "k3"))

	// The stacked view still reads through the moved upperdir.
	if got := mustRead(t, filepath.Join(v2, "new.txt")); got != "new" {
		t.Fatalf("new.txt after the commit below = %q", got)
	}
	mustWrite(t, filepath.Join(v2, "third.txt"), "3", 0o644)
	var l2 bytes.Buffer
	check(t, s.Diff(ctx, "k2", &l2, WithSourceDateEpoch(clampAt)))
	if got := names(readTar(t, l2.Bytes())); strings.Join(got, " ") != "second.txt third.txt" {
		t.Fatalf("stacked step's diff = %q", got)
	}
	n2 := ChainID(n1, diffID(l2.Bytes()))
	check(t, s.Commit(ctx, n2, "k2"))
	dirs, err := s.LowerDirs(n2)
	check(t, err)
	if len(dirs) != 3 {
		t.Fatalf("chain of the stacked step has %d layers, want 3", len(dirs))
	}
	if ents, _ := os.ReadDir(filepath.Join(s.root, "active")); len(ents) != 0 {
		t.Errorf("active snapshots left: %d", len(ents))
	}
}

// A frozen step whose layer another build committed first is discarded only
// once the step stacked on it is gone, and that step then stands on the
// other build's layer.
func TestFreezeCommitExistingKeepsStack(t *testing.T) {
	ctx := context.Background()
	s, root := newTestSnapshotter(t, DriverOverlay)
	base := applyBase(t, s)
	layer := func(key string) []byte {
		var b bytes.Buffer
		check(t, s.Diff(ctx, key, &b, WithSourceDateEpoch(clampAt)))
		return b.Bytes()
	}
	v, err := s.Prepare(ctx, "other", base)
	check(t, err)
	stepChanges(t, v)
	l := layer("other")
	n1 := ChainID(base, diffID(l))
	check(t, s.Commit(ctx, n1, "other"))

	v2 := frozenStack(t, s, base)
	if !bytes.Equal(layer("k1"), l) {
		t.Fatal("the frozen step's layer differs from the same step's")
	}
	check(t, s.Commit(ctx, n1, "k1"))
	if got := mustRead(t, filepath.Join(v2, "new.txt")); got != "new" {
		t.Fatalf("new.txt over the discarded step = %q", got)
	}
	if n := len(mustReadDir(t, filepath.Join(root, "active"))); n != 2 {
		t.Fatalf("%d active dirs while the stacked step is mounted, want 2 (it and the retired one)", n)
	}
	mustWrite(t, filepath.Join(v2, "x"), "x", 0o644)
	if got := names(readTar(t, layer("k2"))); strings.Join(got, " ") != "x" {
		t.Fatalf("stacked diff = %q", got)
	}
	if n := len(mustReadDir(t, filepath.Join(root, "active"))); n != 2 {
		t.Fatalf("%d active dirs after the stacked step's diff, want 2 (its lowers are read until it is committed)", n)
	}
	check(t, s.Commit(ctx, ChainID(n1, "sha256:"+strings.Repeat("3", 64)), "k2"))
	if n := len(mustReadDir(t, filepath.Join(root, "active"))); n != 0 {
		t.Fatalf("%d active dirs once the stacked step is committed, want 0", n)
	}
}

func TestFreezeCopyDriverUnsupported(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, DriverCopy)
	base := applyBase(t, s)
	_, err := s.Prepare(ctx, "k", base)
	check(t, err)
	if err := s.Freeze(ctx, "k"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Freeze on the copy driver: %v, want ErrUnsupported", err)
	}
	if _, err := s.Prepare(ctx, "k2", "", OverFrozen("k")); err == nil {
		t.Fatal("Prepare over a snapshot of the copy driver succeeded")
	}
	check(t, s.Remove(ctx, "k"))
}

// A memory snapshot's layer is kept as the blob its diff was written to and
// an EROFS index over it: nothing of it is unpacked on disk, views and
// steps over it read it through the index, and a step stacked on it while
// it is frozen gives the same layer as one over the committed layer.
func TestInMemoryLayerIsItsBlob(t *testing.T) {
	ctx := context.Background()
	s, root := newTestSnapshotter(t, DriverOverlay)
	if !s.Indexes() {
		t.Skip("EROFS indexes cannot be mounted here")
	}
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "mem", base, InMemory(64<<20))
	check(t, err)
	mustWrite(t, filepath.Join(v, "dir", "new.txt"), "new", 0o640)
	check(t, os.Remove(filepath.Join(v, "del.txt")))
	check(t, os.Mkdir(filepath.Join(v, "big"), 0o755))
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	mustWrite(t, filepath.Join(v, "big", "f"), big, 0o644)
	check(t, os.Link(filepath.Join(v, "big", "f"), filepath.Join(v, "big", "g")))
	check(t, s.Freeze(ctx, "mem", WithSourceDateEpoch(clampAt)))
	v2, err := s.Prepare(ctx, "over", "", OverFrozen("mem"))
	check(t, err)

	blob := filepath.Join(t.TempDir(), "blob")
	f, err := os.Create(blob)
	check(t, err)
	check(t, s.Diff(ctx, "mem", f, WithSourceDateEpoch(clampAt)))
	check(t, f.Close())
	b, err := os.ReadFile(blob)
	check(t, err)
	name := ChainID(base, diffID(b))
	check(t, s.Commit(ctx, name, "mem", WithBlob(blob, true)))
	h, _ := nameHex(name)
	if ents := mustReadDir(t, filepath.Join(root, "layers", h, "fs")); len(ents) != 0 {
		t.Errorf("the layer was unpacked: fs/ holds %v", ents)
	}
	if indexed, whole := isIndexed(filepath.Join(root, "layers", h)); !indexed || !whole {
		t.Fatalf("committed memory layer: indexed %v, whole %v", indexed, whole)
	}
	if probs, err := s.Check(); err != nil || len(probs) != 0 {
		t.Fatalf("Check: %v %v", probs, err)
	}

	// The stacked step reads through the frozen tmpfs, then commits on the indexed layer.
	if got := mustRead(t, filepath.Join(v2, "big", "g")); got != big {
		t.Fatal("big/g over the memory step differs")
	}
	mustWrite(t, filepath.Join(v2, "dir", "new.txt"), "newer", 0o640)
	var l2 bytes.Buffer
	check(t, s.Diff(ctx, "over", &l2, WithSourceDateEpoch(clampAt)))
	if got := names(readTar(t, l2.Bytes())); strings.Join(got, " ") != "dir/ dir/new.txt" {
		t.Fatalf("stacked diff = %q", got)
	}
	check(t, s.Commit(ctx, ChainID(name, diffID(l2.Bytes())), "over"))

	// A view of the indexed layer shows it as its tar says.
	view, err := s.View(ctx, "view", name)
	check(t, err)
	if got := mustRead(t, filepath.Join(view, "dir", "new.txt")); got != "new" {
		t.Errorf("dir/new.txt = %q", got)
	}
	if exists(filepath.Join(view, "del.txt")) {
		t.Error("del.txt, deleted in the layer, shows in its view")
	}
	if st, gt := statT(t, filepath.Join(view, "big", "f")), statT(t, filepath.Join(view, "big", "g")); st.Ino != gt.Ino || st.Nlink != 2 {
		t.Errorf("big/f and big/g are not one file with 2 links (%d/%d, nlink %d)", st.Ino, gt.Ino, st.Nlink)
	}
	if got := mustRead(t, filepath.Join(view, "keep.txt")); got != "keep" {
		t.Errorf("keep.txt from the base = %q", got)
	}
	check(t, s.Remove(ctx, "view"))
	if m := mountsUnder(t, root); len(m) != 0 {
		t.Errorf("mounts left under the root: %v", m)
	}
	if ents := mustReadDir(t, filepath.Join(root, "active")); len(ents) != 0 {
		t.Errorf("active snapshots left: %v", ents)
	}

	// The layer is its blob: a damaged blob is a damaged layer, and Check
	// says so (fsck --repair then removes it).
	b[len(b)-2000] ^= 0xff
	check(t, os.WriteFile(blob, b, 0o644)) // the same file, rewritten
	probs, err := s.Check()
	check(t, err)
	if len(probs) != 2 || probs[0].Name != name && probs[1].Name != name || !strings.Contains(probs[0].Err+probs[1].Err, "damaged") {
		t.Errorf("Check after the blob was damaged: %v, want %s (damaged) and its child", probs, name)
	}
}

// A frozen step whose layer another process installs while this one
// commits it (the rename into layers/ lost) keeps its upperdir for the step
// stacked on it, which then stands on the other process's layer.
func TestFreezeCommitLosesInstallRace(t *testing.T) {
	ctx := context.Background()
	s, root := newTestSnapshotter(t, DriverOverlay)
	base := applyBase(t, s)
	v2 := frozenStack(t, s, base)
	var l1 bytes.Buffer
	check(t, s.Diff(ctx, "k1", &l1, WithSourceDateEpoch(clampAt)))
	n1 := ChainID(base, diffID(l1.Bytes()))
	h1, _ := nameHex(n1)

	other, err := New(root, DriverOverlay)
	check(t, err)
	raced := false
	testBeforeInstall = func(h string) {
		if h == h1 && !raced {
			raced = true
			check(t, other.Apply(ctx, n1, base, bytes.NewReader(l1.Bytes())))
		}
	}
	defer func() { testBeforeInstall = nil }()
	check(t, s.Commit(ctx, n1, "k1"))
	if !raced {
		t.Fatal("the other process's install did not run")
	}
	if got := mustRead(t, filepath.Join(v2, "new.txt")); got != "new" {
		t.Fatalf("new.txt over the step after the lost race = %q", got)
	}
	if got := mustRead(t, filepath.Join(v2, "keep.txt")); got != "changed" {
		t.Fatalf("keep.txt over the step after the lost race = %q", got)
	}
	mustWrite(t, filepath.Join(v2, "x"), "x", 0o644)
	var l2 bytes.Buffer
	check(t, s.Diff(ctx, "k2", &l2, WithSourceDateEpoch(clampAt)))
	if got := names(readTar(t, l2.Bytes())); strings.Join(got, " ") != "x" {
		t.Fatalf("stacked diff = %q", got)
	}
	check(t, s.Commit(ctx, ChainID(n1, diffID(l2.Bytes())), "k2"))
	if ents := mustReadDir(t, filepath.Join(root, "active")); len(ents) != 0 {
		t.Errorf("active snapshots left: %v", ents)
	}
	if probs, err := s.Check(); err != nil || len(probs) != 0 {
		t.Errorf("Check: %v %v", probs, err)
	}
}
