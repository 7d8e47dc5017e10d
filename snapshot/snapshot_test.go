package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var drivers = []string{DriverOverlay, DriverCopy}

// TestSnapshotter is the conformance suite, run against every driver.
func TestSnapshotter(t *testing.T) {
	requireRoot(t)
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) {
			for _, tc := range []struct {
				name string
				fn   func(*testing.T, string)
			}{
				{"ApplyThenPrepare", testApplyThenPrepare},
				{"Diff", testDiff},
				{"DiffUnchangedIsEmpty", testDiffUnchanged},
				{"DiffTouchedDirIsNoChange", testDiffTouchedDir},
				{"DiffReproducible", testDiffReproducible},
				{"ApplyOpaqueAndWhiteout", testApplyOpaqueAndWhiteout},
				{"ApplyMalicious", testApplyMalicious},
				{"ApplyVerifiesName", testApplyVerifiesName},
				{"View", testView},
				{"CommitExisting", testCommitExisting},
				{"ConcurrentApply", testConcurrentApply},
				{"Errors", testErrors},
				{"RemoveCommitted", testRemoveCommitted},
				{"LongChain", testLongChain},
				{"Cleanup", testCleanup},
			} {
				t.Run(tc.name, func(t *testing.T) { tc.fn(t, d) })
			}
		})
	}
}

// baseLayer is a base image layer used by several tests.
func baseLayer(t testing.TB) []byte {
	keep := reg("keep.txt", "keep", 0o644)
	keep.PAXRecords = map[string]string{"SCHILY.xattr.user.foo": "bar"}
	return mkTar(t,
		dirEntry("./", 0o755),
		reg("del.txt", "bye", 0o644),
		dirEntry("dev/", 0o755),
		tarEntry{Header: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666, ModTime: t0}},
		tarEntry{Header: tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: t0}},
		dirEntry("dir/", 0o755),
		reg("dir/a", "a", 0o644),
		dirEntry("dir/sub/", 0o755),
		reg("dir/sub/b", "b", 0o644),
		dirEntry("etc/", 0o755),
		reg("etc/passwd", "root:x:0:0", 0o644),
		reg("hl1", "hard", 0o644),
		hardlink("hl2", "hl1"),
		keep,
		tarEntry{Header: tar.Header{Name: "setuid", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 7, Gid: 8, ModTime: t0}},
		symlink("sym", "keep.txt"),
	)
}

// applyBase applies baseLayer and returns its name.
func applyBase(t testing.TB, s Snapshotter) string {
	t.Helper()
	b := baseLayer(t)
	name := ChainID("", diffID(b))
	check(t, s.Apply(context.Background(), name, "", bytes.NewReader(b)))
	return name
}

func testApplyThenPrepare(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	if !s.Exists(base) {
		t.Fatal("base does not exist after Apply")
	}
	// Idempotent: a second Apply does not read its reader.
	check(t, s.Apply(ctx, base, "", errReader{}))

	v, err := s.Prepare(ctx, "k", base)
	check(t, err)
	defer s.Remove(ctx, "k")
	if got := mustRead(t, filepath.Join(v, "keep.txt")); got != "keep" {
		t.Errorf("keep.txt = %q", got)
	}
	if got := xattr(t, filepath.Join(v, "keep.txt"), "user.foo"); got != "bar" {
		t.Errorf("user.foo = %q", got)
	}
	if l, _ := os.Readlink(filepath.Join(v, "sym")); l != "keep.txt" {
		t.Errorf("sym -> %q", l)
	}
	st1, st2 := statT(t, filepath.Join(v, "hl1")), statT(t, filepath.Join(v, "hl2"))
	if st1.Ino != st2.Ino || st1.Nlink != 2 {
		t.Errorf("hl1/hl2 not hard linked: ino %d/%d nlink %d", st1.Ino, st2.Ino, st1.Nlink)
	}
	st := statT(t, filepath.Join(v, "setuid"))
	if st.Mode&0o7777 != 0o4755 || st.Uid != 7 || st.Gid != 8 {
		t.Errorf("setuid: mode %o uid %d gid %d", st.Mode&0o7777, st.Uid, st.Gid)
	}
	if st := statT(t, filepath.Join(v, "dev/null")); st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null: mode %o rdev %d", st.Mode, st.Rdev)
	}
	if st := statT(t, filepath.Join(v, "dev/fifo")); st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("dev/fifo: mode %o", st.Mode)
	}
	if st := statT(t, filepath.Join(v, "dir")); st.Mtim.Sec != t0.Unix() {
		t.Errorf("dir mtime %d, want %d", st.Mtim.Sec, t0.Unix())
	}
	dirs, err := s.LowerDirs(base)
	check(t, err)
	if len(dirs) != 1 || !strings.HasSuffix(dirs[0], "/fs") {
		t.Errorf("LowerDirs = %v", dirs)
	}
	if st := statT(t, dirs[0]); st.Mtim.Sec != t0.Unix() || st.Mode&0o7777 != 0o755 {
		t.Errorf("layer root from the ./ entry: mtime %d mode %o", st.Mtim.Sec, st.Mode&0o7777)
	}
	if driver == DriverOverlay {
		// Views share the unpacked layer: an untouched file is the layer's inode.
		v2, err := s.Prepare(ctx, "k2", base)
		check(t, err)
		defer s.Remove(ctx, "k2")
		in := statT(t, filepath.Join(dirs[0], "keep.txt")).Ino
		if a, b := statT(t, filepath.Join(v, "keep.txt")).Ino, statT(t, filepath.Join(v2, "keep.txt")).Ino; a != in || b != in {
			t.Errorf("views do not share the layer: inodes %d %d, layer %d", a, b, in)
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("read called") }

// mutate makes the changes every diff test expects (see wantDiff) in view v.
func mutate(t *testing.T, v string) {
	mustWrite(t, filepath.Join(v, "new.txt"), "new", 0o644)
	check(t, unix.Lsetxattr(filepath.Join(v, "new.txt"), "user.foo", []byte("baz"), 0))
	f, err := os.OpenFile(filepath.Join(v, "keep.txt"), os.O_APPEND|os.O_WRONLY, 0)
	check(t, err)
	f.WriteString("+more")
	f.Close()
	check(t, os.Remove(filepath.Join(v, "del.txt")))
	check(t, os.RemoveAll(filepath.Join(v, "dir")))
	check(t, os.Mkdir(filepath.Join(v, "dir"), 0o750))
	mustWrite(t, filepath.Join(v, "dir/c"), "c", 0o600)
	check(t, os.Chmod(filepath.Join(v, "etc/passwd"), 0o600))
	check(t, os.Lchown(filepath.Join(v, "etc/passwd"), 1000, 1001))
	check(t, os.Symlink("new.txt", filepath.Join(v, "newlink")))
	mustWrite(t, filepath.Join(v, "h1"), "h", 0o644)
	check(t, os.Link(filepath.Join(v, "h1"), filepath.Join(v, "h2")))
	for _, p := range []string{"new.txt", "keep.txt", "dir/c", "dir", "etc/passwd", "etc", "h1", "newlink"} {
		lutimes(t, filepath.Join(v, p), t1)
	}
}

var wantDiff = []string{
	".wh.del.txt",
	"dir/", "dir/.wh..wh..opq", "dir/c",
	"etc/", "etc/passwd",
	"h1", "h2",
	"keep.txt",
	"new.txt",
	"newlink",
}

func testDiff(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "step", base)
	check(t, err)
	mutate(t, v)
	b := diffBytes(t, s, "step")
	es := readTar(t, b)
	if got := names(es); !reflect.DeepEqual(got, wantDiff) {
		t.Fatalf("diff entries:\n got %q\nwant %q", got, wantDiff)
	}
	byName := map[string]tarEntry{}
	for _, e := range es {
		byName[e.Name] = e
		for k := range e.PAXRecords {
			if strings.Contains(k, "trusted.overlay") {
				t.Errorf("%s carries %s", e.Name, k)
			}
		}
		if e.Uname != "" || e.Gname != "" {
			t.Errorf("%s has user/group names %q/%q", e.Name, e.Uname, e.Gname)
		}
		if e.ModTime.Nanosecond() != 0 {
			t.Errorf("%s mtime has sub-second precision", e.Name)
		}
	}
	if e := byName[".wh.del.txt"]; e.Typeflag != tar.TypeReg || e.Size != 0 {
		t.Errorf("whiteout: %+v", e.Header)
	}
	if e := byName["dir/"]; e.Typeflag != tar.TypeDir || e.Mode != 0o750 {
		t.Errorf("dir/: type %c mode %o", e.Typeflag, e.Mode)
	}
	if e := byName["etc/passwd"]; e.Mode != 0o600 || e.Uid != 1000 || e.Gid != 1001 || e.Body != "root:x:0:0" {
		t.Errorf("etc/passwd: mode %o uid %d gid %d body %q", e.Mode, e.Uid, e.Gid, e.Body)
	}
	if e := byName["h2"]; e.Typeflag != tar.TypeLink || e.Linkname != "h1" {
		t.Errorf("h2: type %c link %q", e.Typeflag, e.Linkname)
	}
	if e := byName["keep.txt"]; e.Body != "keep+more" || e.PAXRecords["SCHILY.xattr.user.foo"] != "bar" || !e.ModTime.Equal(t1) {
		t.Errorf("keep.txt: body %q pax %v mtime %v", e.Body, e.PAXRecords, e.ModTime)
	}
	if e := byName["new.txt"]; e.PAXRecords["SCHILY.xattr.user.foo"] != "baz" {
		t.Errorf("new.txt pax %v", e.PAXRecords)
	}
	if e := byName["newlink"]; e.Typeflag != tar.TypeSymlink || e.Linkname != "new.txt" {
		t.Errorf("newlink: %+v", e.Header)
	}
	checkSorted(t, names(es))

	// Commit and look at the committed layer and a view over it.
	name := ChainID(base, diffID(b))
	check(t, s.Commit(ctx, name, "step"))
	if _, err := s.lookup("step"); !errors.Is(err, ErrNotFound) {
		t.Errorf("active snapshot still there after Commit: %v", err)
	}
	fs := layerFS(t, s, name)
	if st := statT(t, filepath.Join(fs, "del.txt")); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("layer: del.txt is not a whiteout: mode %o", st.Mode)
	}
	if got := xattr(t, filepath.Join(fs, "dir"), opaqueXattr); got != "y" {
		t.Errorf("layer: dir opaque = %q", got)
	}
	attrs, err := readXattrs(filepath.Join(fs, "keep.txt"))
	check(t, err)
	for k := range attrs {
		if strings.HasPrefix(k, overlayXattr) {
			t.Errorf("layer: keep.txt keeps %s", k)
		}
	}
	if dirs, _ := s.LowerDirs(name); len(dirs) != 2 {
		t.Errorf("LowerDirs = %v", dirs)
	}

	v2, err := s.Prepare(ctx, "next", name)
	check(t, err)
	defer s.Remove(ctx, "next")
	if exists(filepath.Join(v2, "del.txt")) {
		t.Error("del.txt still visible")
	}
	if ents, _ := os.ReadDir(filepath.Join(v2, "dir")); len(ents) != 1 || ents[0].Name() != "c" {
		t.Errorf("dir holds %v, want only c", ents)
	}
	if got := mustRead(t, filepath.Join(v2, "keep.txt")); got != "keep+more" {
		t.Errorf("keep.txt = %q", got)
	}
	if st := statT(t, filepath.Join(v2, "etc/passwd")); st.Mode&0o777 != 0o600 || st.Uid != 1000 {
		t.Errorf("etc/passwd mode %o uid %d", st.Mode&0o777, st.Uid)
	}
	if a, b := statT(t, filepath.Join(v2, "h1")), statT(t, filepath.Join(v2, "h2")); a.Ino != b.Ino {
		t.Error("h1/h2 not linked")
	}
	if a, b := statT(t, filepath.Join(v2, "hl1")), statT(t, filepath.Join(v2, "hl2")); a.Ino != b.Ino {
		t.Error("hl1/hl2 not linked")
	}
	if got := xattr(t, filepath.Join(v2, "new.txt"), "user.foo"); got != "baz" {
		t.Errorf("new.txt user.foo = %q", got)
	}
}

// checkSorted checks tar order: parents before children, names sorted within
// a directory (a whiteout sorts under the name it deletes).
func checkSorted(t *testing.T, ns []string) {
	t.Helper()
	seen := map[string]bool{"": true}
	last := map[string]string{}
	for _, n := range ns {
		p := strings.TrimSuffix(n, "/")
		dir, base := filepath.Dir(p), filepath.Base(p)
		if dir == "." {
			dir = ""
		}
		if !seen[dir] && !seen[dir+"/"] {
			t.Errorf("%s comes before its parent", n)
		}
		if base == opaqueMarker {
			continue
		}
		key := strings.TrimPrefix(base, whiteoutPrefix)
		if prev, ok := last[dir]; ok && prev >= key {
			t.Errorf("%s out of order after %s", n, prev)
		}
		last[dir] = key
		seen[p] = true
	}
}

func testDiffUnchanged(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "k", base)
	check(t, err)
	mustRead(t, filepath.Join(v, "keep.txt"))
	if es := readTar(t, diffBytes(t, s, "k")); len(es) != 0 {
		t.Errorf("diff of an unchanged view has entries %q", names(es))
	}
	check(t, s.Remove(ctx, "k"))
}

// A directory whose content is as it was (a file created in it and removed
// again, its mtime restored: what a runtime's mount-point stub does) is no
// change, even though overlay copied it up; a directory whose mtime really
// changed is one.
func testDiffTouchedDir(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "k", base)
	check(t, err)
	for _, d := range []string{"dir", "dir/sub"} {
		p := filepath.Join(v, d)
		fi, err := os.Stat(p)
		check(t, err)
		stub := filepath.Join(p, "stub")
		check(t, os.WriteFile(stub, nil, 0o644))
		check(t, os.Remove(stub))
		check(t, os.Chtimes(p, fi.ModTime(), fi.ModTime()))
	}
	check(t, os.WriteFile(filepath.Join(v, "new.txt"), []byte("n"), 0o644))
	if got := names(readTar(t, diffBytes(t, s, "k"))); strings.Join(got, " ") != "new.txt" {
		t.Errorf("diff = %q, want only new.txt", got)
	}
	check(t, s.Remove(ctx, "k"))

	v, err = s.Prepare(ctx, "k2", base)
	check(t, err)
	stub := filepath.Join(v, "dir", "stub")
	check(t, os.WriteFile(stub, nil, 0o644))
	check(t, os.Remove(stub))
	check(t, os.Chtimes(filepath.Join(v, "dir"), time.Unix(1700000000, 0), time.Unix(1700000000, 0)))
	if got := names(readTar(t, diffBytes(t, s, "k2"))); strings.Join(got, " ") != "dir/" {
		t.Errorf("diff = %q, want dir/ (its mtime changed)", got)
	}
	check(t, s.Remove(ctx, "k2"))
}

// diffOnce runs the diff scenario in a fresh store and returns the tar.
func diffOnce(t *testing.T, driver string) []byte {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "k", base)
	check(t, err)
	mutate(t, v)
	b := diffBytes(t, s, "k")
	check(t, s.Remove(ctx, "k"))
	return b
}

func testDiffReproducible(t *testing.T, driver string) {
	a, b := diffOnce(t, driver), diffOnce(t, driver)
	if !bytes.Equal(a, b) {
		t.Fatalf("two identical runs gave different tars (%d vs %d bytes)", len(a), len(b))
	}
}

// TestDriversAgree checks that both drivers write the same bytes for the same changes.
func TestDriversAgree(t *testing.T) {
	requireRoot(t)
	a, b := diffOnce(t, DriverOverlay), diffOnce(t, DriverCopy)
	if !bytes.Equal(a, b) {
		ea, eb := readTar(t, a), readTar(t, b)
		for i := range min(len(ea), len(eb)) {
			if !reflect.DeepEqual(ea[i], eb[i]) {
				t.Errorf("entry %d differs:\noverlay %+v\n   copy %+v", i, ea[i], eb[i])
			}
		}
		t.Fatalf("overlay and copy drivers disagree (%d vs %d entries)", len(ea), len(eb))
	}
}

func testApplyOpaqueAndWhiteout(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	b := mkTar(t,
		reg(".wh.del.txt", "", 0),
		dirEntry("dir/", 0o700),
		reg("dir/.wh..wh..opq", "", 0),
		reg("dir/z", "z", 0o644),
		reg("etc/.wh.passwd", "", 0),
		reg("etc/group", "g", 0o644), // etc/ has no entry of its own: made 0755
	)
	name := ChainID(base, diffID(b))
	check(t, s.Apply(ctx, name, base, bytes.NewReader(b)))
	v, err := s.Prepare(ctx, "k", name)
	check(t, err)
	defer s.Remove(ctx, "k")
	if exists(filepath.Join(v, "del.txt")) || exists(filepath.Join(v, "etc/passwd")) {
		t.Error("whited-out files still visible")
	}
	if ents, _ := os.ReadDir(filepath.Join(v, "dir")); len(ents) != 1 || ents[0].Name() != "z" {
		t.Errorf("opaque dir holds %v, want only z", ents)
	}
	if got := mustRead(t, filepath.Join(v, "etc/group")); got != "g" {
		t.Errorf("etc/group = %q", got)
	}
	if !exists(filepath.Join(v, "keep.txt")) {
		t.Error("keep.txt lost")
	}
}

func testApplyMalicious(t *testing.T, driver string) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, driver)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	mustWrite(t, victim, "safe", 0o644)
	rel, err := filepath.Rel(filepath.Join(dir, "tmp", "x", "fs"), outside)
	check(t, err)
	for _, tc := range []struct {
		name    string
		entries []tarEntry
	}{
		{"dotdot", []tarEntry{reg("../../../../../../../.."+outside+"/pwned", "x", 0o644)}},
		{"dotdot-inner", []tarEntry{dirEntry("a/", 0o755), reg("a/../../pwned", "x", 0o644)}},
		{"absolute", []tarEntry{reg(outside+"/pwned", "x", 0o644)}},
		{"symlink-abs", []tarEntry{symlink("a", outside), reg("a/pwned", "x", 0o644)}},
		{"symlink-rel", []tarEntry{symlink("a", rel), reg("a/pwned", "x", 0o644)}},
		{"symlink-dir-then-file", []tarEntry{symlink("a", outside), dirEntry("a/sub/", 0o755)}},
		{"symlink-dotdot", []tarEntry{symlink("victim", victim), reg("a/../victim", "x", 0o644)}},
		{"hardlink-out", []tarEntry{hardlink("h", victim)}},
		{"hardlink-dotdot", []tarEntry{hardlink("h", "../../../../../../.."+victim)}},
		{"hardlink-via-symlink", []tarEntry{symlink("a", outside), hardlink("h", "a/victim")}},
		{"whiteout-via-symlink", []tarEntry{symlink("a", outside), reg("a/.wh.victim", "", 0)}},
		{"opaque-via-symlink", []tarEntry{symlink("a", outside), reg("a/.wh..wh..opq", "", 0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mkTar(t, tc.entries...)
			name := ChainID("", diffID(b))
			err := s.Apply(ctx, name, "", bytes.NewReader(b))
			if err == nil {
				t.Errorf("Apply succeeded")
			}
			t.Logf("Apply: %v", err)
			if s.Exists(name) {
				t.Errorf("layer exists after a failed Apply")
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 || mustRead(t, victim) != "safe" {
				t.Fatalf("wrote outside the layer: %v", ents)
			}
			if st := statT(t, victim); st.Nlink != 1 {
				t.Fatalf("victim got hard linked")
			}
		})
	}
	// A file replacing a symlink to outside is written in the layer, not through the link.
	b := mkTar(t, symlink("victim", victim), reg("victim", "inside", 0o644))
	name := ChainID("", diffID(b))
	check(t, s.Apply(ctx, name, "", bytes.NewReader(b)))
	if got := mustRead(t, filepath.Join(layerFS(t, s, name), "victim")); got != "inside" || mustRead(t, victim) != "safe" {
		t.Errorf("symlink replaced badly: layer %q, victim %q", got, mustRead(t, victim))
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("temp dirs left: %v", ents)
	}
}

func testView(t *testing.T, driver string) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	v, err := s.View(ctx, "view", base)
	check(t, err)
	if got := mustRead(t, filepath.Join(v, "keep.txt")); got != "keep" {
		t.Errorf("keep.txt = %q", got)
	}
	if driver == DriverOverlay {
		if err := os.WriteFile(filepath.Join(v, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write into view: %v, want EROFS", err)
		}
	}
	if err := s.Diff(ctx, "view", &bytes.Buffer{}); err == nil {
		t.Error("Diff of a view succeeded")
	}
	if err := s.Commit(ctx, ChainID(base, base), "view"); err == nil {
		t.Error("Commit of a view succeeded")
	}
	// A view of the empty filesystem.
	e, err := s.View(ctx, "empty", "")
	check(t, err)
	if ents, err := os.ReadDir(e); err != nil || len(ents) != 0 {
		t.Errorf("empty view: %v %v", ents, err)
	}
	check(t, s.Remove(ctx, "view"))
	check(t, s.Remove(ctx, "empty"))
	if m := mountsUnder(t, dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

func testCommitExisting(t *testing.T, driver string) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, driver)
	for _, k := range []string{"a", "b"} {
		v, err := s.Prepare(ctx, k, "")
		check(t, err)
		mustWrite(t, filepath.Join(v, "f"), k, 0o644)
	}
	name := ChainID("", "sha256:"+strings.Repeat("ab", 32))
	check(t, s.Commit(ctx, name, "a"))
	check(t, s.Commit(ctx, name, "b")) // exists: b is discarded
	v, err := s.Prepare(ctx, "c", name)
	check(t, err)
	if got := mustRead(t, filepath.Join(v, "f")); got != "a" {
		t.Errorf("f = %q, want the first commit's", got)
	}
	check(t, s.Remove(ctx, "c"))
	if ents, _ := os.ReadDir(filepath.Join(dir, "active")); len(ents) != 0 {
		t.Errorf("active snapshots left: %v", ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("temp dirs left: %v", ents)
	}
}

func testConcurrentApply(t *testing.T, driver string) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, driver)
	b := baseLayer(t)
	name := ChainID("", diffID(b))
	// Separate snapshotters on the same root behave like separate processes.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			other, err := New(dir, driver)
			if err != nil {
				errs[i] = err
				return
			}
			errs[i] = other.Apply(ctx, name, "", bytes.NewReader(b))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		check(t, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "layers")); len(ents) != 1 {
		t.Errorf("layers: %v", ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "l")); len(ents) != 1 {
		t.Errorf("links: %v (losers must remove theirs)", ents)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("temp dirs left: %v", ents)
	}
	if !s.Exists(name) {
		t.Error("layer missing")
	}
}

func testErrors(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	missing := "sha256:" + strings.Repeat("0", 64)
	_, err := s.Prepare(ctx, "dup", "")
	check(t, err)
	defer s.Remove(ctx, "dup")
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"prepare missing parent", func() error { _, err := s.Prepare(ctx, "x", missing); return err }(), ErrNotFound},
		{"view missing parent", func() error { _, err := s.View(ctx, "x", missing); return err }(), ErrNotFound},
		{"prepare duplicate key", func() error { _, err := s.Prepare(ctx, "dup", ""); return err }(), ErrExists},
		{"diff unknown", s.Diff(ctx, "nope", &bytes.Buffer{}), ErrNotFound},
		{"commit unknown", s.Commit(ctx, missing, "nope"), ErrNotFound},
		{"remove unknown", s.Remove(ctx, "nope"), ErrNotFound},
		{"remove unknown name", s.Remove(ctx, missing), ErrNotFound},
		{"lowerdirs unknown", func() error { _, err := s.LowerDirs(missing); return err }(), ErrNotFound},
		{"apply missing parent", s.Apply(ctx, "sha256:"+strings.Repeat("1", 64), missing, bytes.NewReader(mkTar(t))), ErrNotFound},
		{"apply bad tar", s.Apply(ctx, "sha256:"+strings.Repeat("2", 64), "", strings.NewReader("not a tar, but long enough to fill a header block? no")), nil},
	} {
		if tc.want == nil {
			if tc.err == nil {
				t.Errorf("%s: no error", tc.name)
			}
			continue
		}
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if err := s.Commit(ctx, "not-a-digest", "dup"); err == nil {
		t.Error("Commit accepted a bad name")
	}
	if s.Exists("not-a-digest") {
		t.Error("Exists of a bad name")
	}
	if _, err := s.Prepare(ctx, "x", ""); err != nil {
		t.Errorf("failed Prepare left key x behind: %v", err)
	}
	s.Remove(ctx, "x")
}

func testRemoveCommitted(t *testing.T, driver string) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	b := mkTar(t, reg("x", "x", 0o644))
	top := ChainID(base, diffID(b))
	check(t, s.Apply(ctx, top, base, bytes.NewReader(b)))
	if err := s.Remove(ctx, base); err == nil {
		t.Error("removed a layer with children")
	}
	check(t, s.Remove(ctx, top))
	check(t, s.Remove(ctx, base))
	for _, d := range []string{"layers", "l", "tmp"} {
		if ents, _ := os.ReadDir(filepath.Join(dir, d)); len(ents) != 0 {
			t.Errorf("%s not empty: %v", d, ents)
		}
	}
}

// testLongChain stacks 150 layers: more than fit in one page of mount options
// with full paths.
func testLongChain(t *testing.T, driver string) {
	ctx := context.Background()
	s, dir := newTestSnapshotter(t, driver)
	n := 150
	if driver == DriverCopy {
		n = 40 // materializing is linear in depth; the page limit does not apply
	}
	parent := ""
	for i := range n {
		entries := []tarEntry{reg(fmt.Sprintf("f%03d", i), fmt.Sprint(i), 0o644)}
		if i > 0 {
			entries = append(entries, reg(fmt.Sprintf(".wh.f%03d", i-1), "", 0))
		}
		b := mkTar(t, entries...)
		name := ChainID(parent, diffID(b))
		check(t, s.Apply(ctx, name, parent, bytes.NewReader(b)))
		parent = name
	}
	dirs, err := s.LowerDirs(parent)
	check(t, err)
	if len(dirs) != n {
		t.Fatalf("LowerDirs has %d entries", len(dirs))
	}
	if driver == DriverOverlay {
		full := 0
		for _, d := range dirs {
			full += len(d) + 1
		}
		if full < os.Getpagesize() {
			t.Fatalf("test chain too short: %d bytes of lowerdirs", full)
		}
	}
	v, err := s.Prepare(ctx, "top", parent)
	check(t, err)
	ents, err := os.ReadDir(v)
	check(t, err)
	if len(ents) != 1 || ents[0].Name() != fmt.Sprintf("f%03d", n-1) {
		t.Errorf("view holds %v", ents)
	}
	mustWrite(t, filepath.Join(v, "new"), "n", 0o644)
	if es := readTar(t, diffBytes(t, s, "top")); !reflect.DeepEqual(names(es), []string{"new"}) {
		t.Errorf("diff = %q", names(es))
	}
	check(t, s.Remove(ctx, "top"))
	if m := mountsUnder(t, dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// TestNewMountAPI mounts through fsopen/fsconfig, used when options exceed a page.
func TestNewMountAPI(t *testing.T) {
	requireRoot(t)
	forceNewMountAPI = true
	defer func() { forceNewMountAPI = false }()
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, DriverOverlay)
	base := applyBase(t, s)
	v, err := s.Prepare(ctx, "k", base)
	check(t, err)
	mustWrite(t, filepath.Join(v, "n"), "n", 0o644)
	if es := readTar(t, diffBytes(t, s, "k")); !reflect.DeepEqual(names(es), []string{"n"}) {
		t.Errorf("diff = %q", names(es))
	}
	check(t, s.Remove(ctx, "k"))
	rv, err := s.View(ctx, "v", base)
	check(t, err)
	if err := os.WriteFile(filepath.Join(rv, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into view: %v", err)
	}
	check(t, s.Remove(ctx, "v"))
}

func TestChainID(t *testing.T) {
	d1 := "sha256:" + strings.Repeat("a", 64)
	d2 := "sha256:" + strings.Repeat("b", 64)
	if got := ChainID("", d1); got != d1 {
		t.Errorf("ChainID(\"\", d1) = %s", got)
	}
	// Computed independently: printf '%s %s' d1 d2 | sha256sum
	want := "sha256:" + diffID([]byte(d1 + " " + d2))[7:]
	if got := ChainID(d1, d2); got != want {
		t.Errorf("ChainID(d1, d2) = %s, want %s", got, want)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/t\011x\134`: "/t\tx\\", `/bad\09`: `/bad\09`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewAuto(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	s, err := New(dir, DriverAuto)
	check(t, err)
	if s.Driver() != DriverOverlay {
		t.Errorf("auto picked %s on a host where overlay works", s.Driver())
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("probe left %v", ents)
	}
	if m := mountsUnder(t, dir); len(m) != 0 {
		t.Errorf("probe left mounts %v", m)
	}
	if _, err := New(dir, "zfs"); err == nil {
		t.Error("unknown driver accepted")
	}
}

// A successful probe is remembered for the kernel and filesystem it ran on,
// so the next open skips it; a record for another kernel is probed again
// and replaced.
func TestNewAutoRemembersProbe(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	s, err := New(dir, DriverAuto)
	check(t, err)
	memo := filepath.Join(dir, overlayMemo)
	b, err := os.ReadFile(memo)
	if err != nil {
		t.Fatalf("no probe record: %v", err)
	}
	if want := s.(*snapshotter).overlayStamp(); string(b) != want || want == "" {
		t.Fatalf("probe record %q, want %q", b, want)
	}
	if !s.(*snapshotter).overlayProbed() {
		t.Fatal("the record is not recognized")
	}
	check(t, os.WriteFile(memo, []byte("0.0.0-other 1\n"), 0o644))
	s, err = New(dir, DriverAuto)
	check(t, err)
	if s.Driver() != DriverOverlay {
		t.Errorf("auto picked %s", s.Driver())
	}
	if b, _ := os.ReadFile(memo); string(b) != s.(*snapshotter).overlayStamp() {
		t.Errorf("stale probe record kept: %q", b)
	}
	for _, e := range mustReadDir(t, dir) {
		if strings.Contains(e, ".tmp-") {
			t.Errorf("left %s", e)
		}
	}
}

func mustReadDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	check(t, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// Apply refuses a layer whose content does not give the chain ID it is
// applied as, and installs nothing under that name; the same bytes under
// their true name apply.
func testApplyVerifiesName(t *testing.T, driver string) {
	ctx := context.Background()
	s, _ := newTestSnapshotter(t, driver)
	base := applyBase(t, s)
	evil := mkTar(t, reg("bin/sh", "evil", 0o755))
	claimed := ChainID(base, diffID(baseLayer(t))) // another layer's diff ID
	err := s.Apply(ctx, claimed, base, bytes.NewReader(evil))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Apply under a false name: %v, want ErrDigestMismatch", err)
	}
	if s.Exists(claimed) {
		t.Fatal("a layer with the wrong content was installed")
	}
	check(t, s.Apply(ctx, ChainID(base, diffID(evil)), base, bytes.NewReader(evil)))
}
