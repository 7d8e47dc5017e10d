package system

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/runtime/runc"
)

// nobody runs argv as user and group 65534 with no supplementary groups.
func nobody(argv ...string) *exec.Cmd {
	return exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, argv...)...)
}

// openDir returns a directory every user can reach (t.TempDir's parent is
// private, which would hide the store root whatever its mode).
func openDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// layerTar returns an uncompressed layer holding a static busybox as
// /bin/sh and a file as a Dockerfile's COPY of a secret would leave it.
func secretLayerTar(t *testing.T, secret string) []byte {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("no static busybox: %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))},
		{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox"},
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/app-secret", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(secret))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "bin/busybox":
			tw.Write(bb)
		case "etc/app-secret":
			tw.Write([]byte(secret))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// No other user can read anything in a store root: blobs, step records,
// unpacked layers, or a running step's bundle (whose config.json holds the
// secrets passed as environment variables), even where the root sits in a
// directory everyone can reach.
func TestRootUnreadableByOthers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"setpriv", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	parent := openDir(t)
	control := filepath.Join(parent, "control")
	if err := os.WriteFile(control, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := nobody("cat", control).CombinedOutput(); err != nil {
		t.Fatalf("nobody cannot read a world-readable file: the test would prove nothing: %v: %s", err, out)
	}

	ctx := context.Background()
	r, err := Open(filepath.Join(parent, "root"))
	if err != nil {
		t.Fatal(err)
	}
	const secret = "s3cret-7d41a0"
	layer := secretLayerTar(t, secret)
	h, n, err := r.Store.PutBlob(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	diffIDs := []v1.Hash{h}
	if err := r.EnsureChain(ctx, diffIDs, []v1.Descriptor{{MediaType: types.OCIUncompressedLayer, Digest: h, Size: n}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Records.Put(&cache.Record{Key: cache.NewKey("", "RUN", secret), CreatedBy: "RUN x"}); err != nil {
		t.Fatal(err)
	}
	rootfs, err := r.Snaps.Prepare(ctx, "test-run", ChainID(diffIDs))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Snaps.Remove(ctx, "test-run")
	rt, err := runc.NewRunc("", r.RunDir())
	if err != nil {
		t.Fatal(err)
	}

	// Checked while the step runs, so that its bundle exists.
	check := func() {
		// The runtime's state and bundles may live in a tmpfs the root
		// links to: those files are the root's too.
		var files, names []string
		walk := func(dir, as string) error {
			return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					files = append(files, p)
					names = append(names, as+strings.TrimPrefix(p, dir))
				}
				return err
			})
		}
		err := walk(r.Dir, r.Dir)
		for _, sub := range []string{"bundles", "runc"} {
			l := filepath.Join(r.RunDir(), sub)
			if fi, lerr := os.Lstat(l); err == nil && lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
				var dst string
				if dst, err = filepath.EvalSymlinks(l); err == nil {
					err = walk(dst, l)
				}
			}
		}
		if err != nil {
			t.Error(err)
			return
		}
		for _, want := range []string{"/oci/blobs/sha256/" + h.Hex, "/cache/records/", "/snapshots/", "/etc/app-secret", "/run/bundles/"} {
			if !strings.Contains(strings.Join(names, "\n"), want) {
				t.Errorf("no file under the root matches %q: the test checks less than it says", want)
			}
		}
		script := `for f; do cat -- "$f" >/dev/null 2>&1 && echo "$f"; done; cat -- "$1" 2>&1 >/dev/null; true`
		out, err := nobody(append([]string{"/bin/sh", "-c", script, "sh"}, files...)...).CombinedOutput()
		if err != nil {
			t.Errorf("setpriv: %v: %s", err, out)
		}
		if !strings.Contains(string(out), "Permission denied") {
			t.Errorf("reading %s as nobody: %q, want Permission denied", files[0], out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.HasPrefix(line, r.Dir+"/") {
				t.Errorf("nobody can read %s", line)
			}
		}
		if out, err := nobody("ls", r.Dir).CombinedOutput(); err == nil {
			t.Errorf("nobody can list the root: %s", out)
		}
	}
	var once sync.Once
	var stderr bytes.Buffer
	err = rt.Run(ctx, rootfs, runc.Meta{
		Args:   []string{"/bin/sh", "-c", "echo started"},
		Env:    []string{"PATH=/bin", "TOKEN=" + secret},
		Stdout: writerFunc(func(p []byte) (int, error) { once.Do(check); return len(p), nil }),
		Stderr: &stderr,
	})
	if err != nil {
		t.Fatalf("run: %v: %s", err, stderr.String())
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Open makes an existing root that others can reach private, and refuses a
// shared (sticky) directory, leaving it as it was.
func TestOpenTightensRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("root mode after Open: %v, %v; want 0700", fi.Mode(), err)
	}
	fresh := filepath.Join(t.TempDir(), "a", "root")
	if _, err := Open(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("new root mode: %v, %v; want 0700", fi.Mode(), err)
	}

	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	_, err := Open(shared)
	if err == nil || !strings.Contains(err.Error(), "sticky") || !strings.Contains(err.Error(), "--root") {
		t.Errorf("sticky dir: %v", err)
	}
	if fi, err := os.Stat(shared); err != nil || fi.Mode() != fs.ModeDir|os.ModeSticky|0o777 {
		t.Errorf("sticky dir changed: %v, %v", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(shared); len(ents) != 0 {
		t.Errorf("Open left %v in the refused dir", ents)
	}
}
