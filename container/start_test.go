package container

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lbuild/lbuild/system"
)

// The init layer of an image is looked up once and remembered per chain:
// the next container stands on the same layer without a view of the
// image; a record naming a layer that is gone (pruned) is ignored and
// rewritten, and the container still gets its mount-point stubs.
func TestInitLayerRemembered(t *testing.T) {
	r := openRoot(t)
	containerImage(t, r, "img")
	img, err := r.Store.Resolve("img")
	if err != nil {
		t.Fatal(err)
	}
	chain := system.ChainID(img.Config.RootFS.DiffIDs)
	memo := filepath.Join(r.containersDir(), ".init", strings.TrimPrefix(chain, "sha256:"))

	c1, out := runFG(t, r, "img", "cat", "/etc/hostname")
	if out != c1.ShortID()+"\n" {
		t.Errorf("hostname %q, want %s", out, c1.ShortID())
	}
	b, err := os.ReadFile(memo)
	if err != nil {
		t.Fatalf("init layer not remembered: %v", err)
	}
	name := string(b)
	if name == chain || !r.Snaps.Exists(name) {
		t.Fatalf("remembered init layer %q: not a layer of its own", name)
	}

	gone := "sha256:" + strings.Repeat("0", 64)
	if err := os.WriteFile(memo, []byte(gone), 0o600); err != nil {
		t.Fatal(err)
	}
	c2, out := runFG(t, r, "img", "cat", "/etc/hostname")
	if out != c2.ShortID()+"\n" {
		t.Errorf("with a stale record: hostname %q, want %s", out, c2.ShortID())
	}
	if b, _ := os.ReadFile(memo); string(b) != name {
		t.Errorf("stale record not rewritten: %q, want %q", b, name)
	}
}
