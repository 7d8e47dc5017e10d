package builder

import (
	"archive/tar"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/system"
)

// A directory source copied into directories the COPY makes (created
// through their descriptors), into an existing destination (its entries
// resolved by path, the directories they make then held), with --chown and
// with --chmod, lands with each entry's source type, mode (setuid, setgid
// and sticky bits too), owner, mtime, link target, content and hard links,
// down a chain deeper than the descriptors held.
func TestCopyTreeKeepsMetadata(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	deep := "deep" + strings.Repeat("/d", maxFreshDepth+3)
	writeFiles(t, dir, map[string]string{
		"tree/top": "top", "tree/a/b/c/file": "abc", "tree/a/exec": "#!/bin/sh", "tree/a/setuid": "u",
		"tree/a/setgid": "g", "tree/a/sticky": "s", "tree/a/secret": "x", "tree/a/b/first": "linked",
		"tree/" + deep + "/leaf": "leaf",
	})
	for name, mode := range map[string]os.FileMode{
		"a/exec": 0o755, "a/setuid": 0o755 | os.ModeSetuid, "a/setgid": 0o750 | os.ModeSetgid, "a/sticky": 0o644 | os.ModeSticky, "a/secret": 0o400,
	} {
		if err := unix.Chmod(filepath.Join(tree, name), sysMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"empty", "a/b/private"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(tree, "a/b/private"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(tree, "a/b/first"), filepath.Join(tree, "a/second")); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"a/rel": "b/c/file", "a/abs": "/etc/passwd", deep + "/up": "../../leaf"} {
		if err := os.Symlink(target, filepath.Join(tree, name)); err != nil {
			t.Fatal(err)
		}
	}
	// Distinct mtimes, children before parents (setting a child's does
	// not move its parent's).
	want := map[string]os.FileInfo{}
	i := 0
	err := filepath.Walk(tree, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		i++
		ts := unix.NsecToTimespec(time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i)*time.Hour + 123456789).UnixNano())
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		want[filepath.ToSlash(rel)] = fi
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Directories finished in the walk, and by concurrent workers.
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			defer func(n int) { copyWorkers = n }(copyWorkers)
			copyWorkers = workers
			checkTreeCopies(t, openRoot(t), dir, tree, deep, want)
		})
	}
}

// checkTreeCopies builds COPYs of tree (in the context dir) and checks
// every entry of want (the tree's, by Rel) in each layer.
func checkTreeCopies(t *testing.T, r *system.Root, dir, tree, deep string, want map[string]os.FileInfo) {
	t.Helper()
	res, _ := mustBuild(t, r, dir, "FROM scratch\nCOPY tree /fresh\nCOPY tree /\nCOPY --chown=7:8 tree /owned/x\nCOPY --chmod=0750 tree /chm\n",
		func(o *Options) { o.SourceDateEpoch = "1577836800" }) // 2020: after every source mtime
	for i, c := range []struct {
		prefix   string
		uid, gid int
		chmod    int64
	}{{prefix: "fresh/"}, {prefix: ""}, {prefix: "owned/x/", uid: 7, gid: 8}, {prefix: "chm/", chmod: 0o750}} {
		got := layerHeaders(t, r, res.Steps[i+1].DiffID)
		firstLinked := ""
		for rel, fi := range want {
			name := c.prefix + rel
			if rel == "." {
				if c.prefix == "" {
					continue // "/" is the image's own
				}
				name = strings.TrimSuffix(c.prefix, "/")
			}
			if fi.IsDir() {
				name += "/"
			}
			hd, ok := got[name]
			if !ok {
				t.Errorf("step %d: %s missing from the layer", i+1, name)
				continue
			}
			wantMode := int64(fi.Mode().Perm())
			for _, b := range []struct {
				fm os.FileMode
				tm int64
			}{{os.ModeSetuid, 0o4000}, {os.ModeSetgid, 0o2000}, {os.ModeSticky, 0o1000}} {
				if fi.Mode()&b.fm != 0 {
					wantMode |= b.tm
				}
			}
			switch {
			case rel == "." && c.chmod == 0:
				wantMode = 0o755 // the destination made for it
			case fi.Mode()&os.ModeSymlink != 0:
				wantMode = hd.Mode & 0o7777 // a link's mode is not copied
			case c.chmod != 0:
				wantMode = c.chmod
			}
			wantType := byte(tar.TypeReg)
			switch {
			case fi.IsDir():
				wantType = tar.TypeDir
			case fi.Mode()&os.ModeSymlink != 0:
				wantType = tar.TypeSymlink
				target, _ := os.Readlink(filepath.Join(tree, rel))
				if hd.Linkname != target {
					t.Errorf("step %d: %s links to %q, want %q", i+1, name, hd.Linkname, target)
				}
			case rel == "a/b/first" || rel == "a/second":
				// The first one copied is a file, the other a link to it.
				if hd.Typeflag == tar.TypeLink {
					wantType = tar.TypeLink
					firstLinked = hd.Linkname
				}
			}
			if hd.Typeflag != wantType || hd.Mode&0o7777 != wantMode || hd.Uid != c.uid || hd.Gid != c.gid ||
				!hd.ModTime.Equal(fi.ModTime().Truncate(time.Second)) {
				t.Errorf("step %d: %s is type %c mode %o owner %d:%d mtime %v, want type %c mode %o owner %d:%d mtime %v",
					i+1, name, hd.Typeflag, hd.Mode&0o7777, hd.Uid, hd.Gid, hd.ModTime, wantType, wantMode, c.uid, c.gid, fi.ModTime().Truncate(time.Second))
			}
		}
		if firstLinked != c.prefix+"a/b/first" && firstLinked != c.prefix+"a/second" {
			t.Errorf("step %d: the hard links among the sources are no hard link in the layer (linkname %q)", i+1, firstLinked)
		}
		if body := got[c.prefix+deep+"/leaf"].body; body != "leaf" {
			t.Errorf("step %d: deep leaf holds %q", i+1, body)
		}
	}
}

type layerHeader struct {
	*tar.Header
	body string
}

// layerHeaders reads the layer diffID's tar entries by name.
func layerHeaders(t *testing.T, r *system.Root, diffID string) map[string]layerHeader {
	t.Helper()
	out := map[string]layerHeader{}
	walkLayer(t, r, diffID, func(hd *tar.Header, body string) {
		out[path.Clean(hd.Name)+map[bool]string{true: "/"}[hd.Typeflag == tar.TypeDir]] = layerHeader{hd, body}
	})
	return out
}
