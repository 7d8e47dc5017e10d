package transfer

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbuild/lbuild/internal/registrytest"
)

// startDockerRegistry runs Debian's docker-registry behind a counting
// reverse proxy and returns the proxy's host:port.
func startDockerRegistry(t *testing.T, cnt *counter) string {
	t.Helper()
	return registrytest.Proxy(t, registrytest.Start(t, "", http.StatusOK), cnt.wrap)
}

func TestDockerRegistry(t *testing.T) {
	ctx := context.Background()
	cnt := newCounter()
	host := startDockerRegistry(t, cnt)

	st := openStore(t)
	base := layerTar(t, map[string][]byte{"etc/os-release": []byte("ID=test\n"), "bin/blob": randomBytes(t, 256<<10)})
	mid := layerTar(t, map[string][]byte{"usr/lib/lib.so": randomBytes(t, 128<<10)})
	onlyA := layerTar(t, map[string][]byte{"app/a.txt": []byte("I am A\n")})
	onlyB := layerTar(t, map[string][]byte{"app/b.txt": []byte("I am B\n")})
	imgA := makeImage(t, st, "a:1", base, mid, onlyA)
	imgB := makeImage(t, st, "b:1", base, mid, onlyB)
	refA, refB := host+"/repo:a", host+"/repo:b"

	var out strings.Builder
	if _, err := Push(ctx, st, imgA, refA, WithProgress(&out)); err != nil {
		t.Fatal(err)
	}
	if got := cnt.get("commit"); got != 4 {
		t.Errorf("push A: %d blob uploads, want 4 (3 layers + config)", got)
	}
	cnt.reset()
	out.Reset()
	if _, err := Push(ctx, st, imgB, refB, WithProgress(&out)); err != nil {
		t.Fatal(err)
	}
	t.Logf("push B:\n%s", out.String())
	if got := cnt.get("commit"); got != 2 {
		t.Errorf("push B: %d blob uploads, want 2 (the one new layer + config)", got)
	}
	if n := strings.Count(out.String(), ": Pushed"); n != 1 {
		t.Errorf("push B: %d Pushed lines, want 1", n)
	}
	if n := strings.Count(out.String(), ": Layer already exists"); n != 2 {
		t.Errorf("push B: %d 'Layer already exists' lines, want 2", n)
	}

	// Another repository of the same registry: every blob is mounted.
	cnt.reset()
	out.Reset()
	if _, err := Push(ctx, st, imgB, host+"/other:b", WithProgress(&out)); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), ": Mounted from repo"); n != 3 {
		t.Errorf("push to another repo: %d 'Mounted from repo' lines, want 3:\n%s", n, out.String())
	}
	if got, mounts := cnt.get("commit"), cnt.get("mount"); got != 0 || mounts != 4 {
		t.Errorf("push to another repo: %d uploads, %d mounts; want 0 and 4", got, mounts)
	}

	// Pull A into an empty store, then B: only B's own layer (and config)
	// is fetched.
	st2 := openStore(t)
	cnt.reset()
	pa, err := Pull(ctx, st2, refA)
	if err != nil {
		t.Fatal(err)
	}
	if got := cnt.get("get"); got != 4 {
		t.Errorf("pull A: %d blob GETs, want 4", got)
	}
	cnt.reset()
	out.Reset()
	pb, err := Pull(ctx, st2, refB, WithProgress(&out))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pull B:\n%s", out.String())
	if got := cnt.get("get"); got != 2 {
		t.Errorf("pull B: %d blob GETs, want 2 (one layer + config)", got)
	}
	if cnt.blobGets(pb.Layers[2].Digest.String()) != 1 {
		t.Error("pull B did not fetch its own layer")
	}
	if pa.ID != imgA.ID || pb.ID != imgB.ID {
		t.Errorf("pulled IDs %s %s, want %s %s", pa.ID, pb.ID, imgA.ID, imgB.ID)
	}

	t.Run("skopeo+umoci", func(t *testing.T) {
		skopeo, umoci := lookTool(t, "skopeo"), lookTool(t, "umoci")
		dir := t.TempDir()
		layout := filepath.Join(dir, "layout")
		run(t, skopeo, "copy", "--src-tls-verify=false", "docker://"+refA, "oci:"+layout+":a")
		bundle := filepath.Join(dir, "bundle")
		run(t, umoci, "unpack", "--image", layout+":a", bundle)
		b, err := os.ReadFile(filepath.Join(bundle, "rootfs", "app", "a.txt"))
		if err != nil || string(b) != "I am A\n" {
			t.Errorf("unpacked app/a.txt = %q, %v", b, err)
		}
	})
}

func lookTool(t *testing.T, name string) string {
	t.Helper()
	p := "/usr/bin/" + name
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s not installed", p)
	}
	return p
}

func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}
