package builder

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbuild/lbuild/system"
)

// The secrets of symlinkContext: neither may reach an image, a snapshot or
// anything else in the store.
const (
	secretFile = "TOPSECRET-file-content"
	secretKey  = "TOPSECRET-key-content"
)

// symlinkContext makes a build context whose .dockerignore hides
// secret.txt, private/ and sub/hidden.txt, with symlinks reaching them:
// link -> secret.txt, dirlink -> private, sublink -> sub, and sub/ln ->
// ../secret.txt inside a directory that is not ignored. goodlink ->
// public.txt points at what the build may see.
func symlinkContext(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		".dockerignore":   "secret.txt\nprivate/\nsub/hidden.txt\n",
		"secret.txt":      secretFile,
		"private/key.pem": secretKey,
		"public.txt":      "public",
		"sub/keep.txt":    "keep",
		"sub/hidden.txt":  secretFile,
	})
	for link, target := range map[string]string{
		"link": "secret.txt", "dirlink": "private", "sublink": "sub", "goodlink": "public.txt", "sub/ln": "../secret.txt",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// assertNoSecret fails if a secret of symlinkContext is in the build
// output or in any file under the store root (layers, snapshots, records).
func assertNoSecret(t *testing.T, r *system.Root, out string) {
	t.Helper()
	if strings.Contains(out, "TOPSECRET") {
		t.Errorf("a secret is in the build output:\n%s", out)
	}
	filepath.WalkDir(r.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte("TOPSECRET")) {
			t.Errorf("a secret is in the store: %s", p)
		}
		return nil
	})
}

// A plain source that is a symlink to an ignored file or directory is not
// found, as in BuildKit, where the target was never sent; symlinks to what
// is not ignored are still followed, and a symlink inside a copied
// directory is copied as the symlink it is.
func TestCopySymlinkToIgnored(t *testing.T) {
	r := openRoot(t)
	dir := symlinkContext(t)
	for _, tc := range []struct{ line, src string }{{"COPY link /x", "link"}, {"COPY dirlink /d/", "dirlink"}, {"ADD link /x", "link"}} {
		_, out, err := tryBuild(r, dir, "FROM scratch\n"+tc.line+"\n")
		if err == nil || !strings.Contains(err.Error(), `source "`+tc.src+`": not found in the build context`) || !strings.Contains(err.Error(), "which .dockerignore excludes") {
			t.Errorf("%s (a symlink into what .dockerignore hides): got %v, want not found, and why", tc.line, err)
		}
		assertNoSecret(t, r, out)
	}
	res, out := mustBuild(t, r, dir, "FROM scratch\nCOPY goodlink /g\nCOPY sub /s/\n")
	if e, ok := find(layerEntries(t, r, res.Steps[1].DiffID), "g"); !ok || e.typ != tar.TypeReg || e.body != "public" {
		t.Errorf("COPY goodlink (a symlink to a file the build sees): %+v", e)
	}
	es := layerEntries(t, r, res.Steps[2].DiffID)
	if got := strings.Join(names(es), " "); got != "s/ s/keep.txt s/ln" {
		t.Errorf("COPY sub /s/: %s", got)
	}
	if e, _ := find(es, "s/ln"); e.typ != tar.TypeSymlink || e.link != "../secret.txt" {
		t.Errorf("a symlink in a copied directory stays a symlink: %+v", e)
	}
	assertNoSecret(t, r, out)
}

// A wildcard does not match a symlink to ignored content, and does not look
// into an ignored directory through a symlink; the cache key does not depend
// on the ignored content either.
func TestCopyWildcardSymlinkToIgnored(t *testing.T) {
	r := openRoot(t)
	dir := symlinkContext(t)
	df := "FROM scratch\nCOPY *link /out/\nCOPY dirlink/* /p/\nCOPY sublink/*.txt /q/\n"
	res, out := mustBuild(t, r, dir, df)
	for i, want := range []string{"out/ out/goodlink out/keep.txt out/ln", "", "q/ q/keep.txt"} {
		if got := strings.Join(names(layerEntries(t, r, res.Steps[i+1].DiffID)), " "); got != want {
			t.Errorf("%s: got %q, want %q", res.Steps[i+1].Text, got, want)
		}
	}
	assertNoSecret(t, r, out)
	// Changing what is ignored changes no key.
	writeFiles(t, dir, map[string]string{"secret.txt": "changed", "private/key.pem": "changed", "sub/hidden.txt": "changed"})
	res, _ = mustBuild(t, r, dir, df)
	if got := cachedFlags(res); !equalBools(got, []bool{true, true, true}) {
		t.Errorf("after changing only ignored files, cached = %v, want all cached", got)
	}
}

// A path through a symlinked directory is checked where it leads: a file
// reached through the link that .dockerignore hides is not found.
func TestCopyThroughSymlinkedDirToIgnored(t *testing.T) {
	r := openRoot(t)
	dir := symlinkContext(t)
	for _, src := range []string{"dirlink/key.pem", "sublink/hidden.txt", "sublink/../dirlink/key.pem"} {
		_, out, err := tryBuild(r, dir, "FROM scratch\nCOPY "+src+" /x\n")
		if err == nil || !strings.Contains(err.Error(), `source "`+src+`": not found in the build context`) {
			t.Errorf("COPY %s: got %v, want not found", src, err)
		}
		assertNoSecret(t, r, out)
	}
	res, out := mustBuild(t, r, dir, "FROM scratch\nCOPY sublink/keep.txt /k\nCOPY sublink /sl/\n")
	if e, ok := find(layerEntries(t, r, res.Steps[1].DiffID), "k"); !ok || e.body != "keep" {
		t.Errorf("COPY sublink/keep.txt: %+v", e)
	}
	if got := strings.Join(names(layerEntries(t, r, res.Steps[2].DiffID)), " "); got != "sl/ sl/keep.txt sl/ln" {
		t.Errorf("COPY sublink /sl/: %s", got)
	}
	assertNoSecret(t, r, out)
}

// A bind mount from the context cannot reach ignored content through a
// symlink: a source that is such a link is not found, and a mounted
// directory shows its links as links, to targets that are not there.
func TestRunBindSymlinkToIgnored(t *testing.T) {
	needRunc(t)
	r := openRoot(t)
	withBusybox(t, r)
	dir := symlinkContext(t)
	for _, src := range []string{"link", "dirlink", "sublink/hidden.txt"} {
		_, out, err := tryBuild(r, dir, "FROM local/busybox\nRUN --mount=type=bind,source="+src+",target=/m cat /m /m/key.pem > /seen; true\n")
		if err == nil || !strings.Contains(err.Error(), `source "`+src+`": not found in the build context`) {
			t.Errorf("bind mount of %s: got %v, want not found", src, err)
		}
		assertNoSecret(t, r, out)
	}
	res, out := mustBuild(t, r, dir, `FROM local/busybox
RUN --mount=type=bind,source=.,target=/m cat /m/link /m/dirlink/key.pem /m/sub/ln /m/sublink/hidden.txt > /seen 2>&1; true
RUN --mount=type=bind,source=sublink,target=/m ls /m > /ls; cat /m/ln >> /ls 2>&1; true
RUN --mount=type=bind,source=goodlink,target=/m cat /m > /good
`)
	for i, name := range []string{"seen", "ls", "good"} {
		e, ok := find(layerEntries(t, r, res.Steps[i+1].DiffID), name)
		if !ok {
			t.Fatalf("%s: no /%s", res.Steps[i+1].Text, name)
		}
		t.Logf("/%s: %q", name, e.body)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[2].DiffID), "ls"); !strings.HasPrefix(e.body, "keep.txt\nln\n") {
		t.Errorf("bind mount of sublink showed %q, want keep.txt and ln", e.body)
	}
	if e, _ := find(layerEntries(t, r, res.Steps[3].DiffID), "good"); e.body != "public" {
		t.Errorf("bind mount of goodlink: %q", e.body)
	}
	assertNoSecret(t, r, out)
}
