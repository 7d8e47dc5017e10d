package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A layer applied from a stream (a compressed blob, decompressed) is kept
// as its tar, written once, and an EROFS index: views read its files
// through the index; a stream that lies about its diff ID installs
// nothing; where the index cannot map the tar, it is unpacked instead.
func TestApplyIndexed(t *testing.T) {
	ctx := context.Background()
	s, root := newTestSnapshotter(t, DriverOverlay)
	if !s.Indexes() {
		t.Skip("EROFS indexes cannot be mounted here")
	}
	b := mkTar(t, dirEntry("etc/", 0o755), reg("etc/os-release", "NAME=test\n", 0o644), reg("bin/sh", "a shell", 0o755))
	name := ChainID("", diffID(b))

	lie := mkTar(t, reg("bin/sh", "another shell", 0o755))
	if err := s.ApplyIndexed(ctx, name, "", bytes.NewReader(lie)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("ApplyIndexed of a lying stream: %v, want ErrDigestMismatch", err)
	}
	if s.Exists(name) {
		t.Fatal("the lying stream was installed")
	}

	check(t, s.ApplyIndexed(ctx, name, "", bytes.NewReader(b)))
	dir := layerDirOf(t, root, name)
	if indexed, whole := isIndexed(dir); !indexed || !whole {
		t.Fatalf("layer indexed %v, whole %v; want both", indexed, whole)
	}
	tarBytes, err := os.ReadFile(filepath.Join(dir, tarFile))
	check(t, err)
	if !bytes.Equal(tarBytes, b) {
		t.Error("the layer's tar is not the stream")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "fs")); len(ents) != 0 {
		t.Errorf("the layer was unpacked too: %v", ents)
	}
	v, err := s.View(ctx, "v", name)
	check(t, err)
	if got := mustRead(t, filepath.Join(v, "etc/os-release")); got != "NAME=test\n" {
		t.Errorf("etc/os-release through the index: %q", got)
	}
	check(t, s.Remove(ctx, "v"))
	// Idempotent: a second apply reads nothing and keeps the layer.
	check(t, s.ApplyIndexed(ctx, name, "", errReader{}))

	// A system.* xattr the index does not map (the applier skips what
	// the kernel refuses): unpacked instead, from the verified tar.
	odd := tarEntry{Header: tar.Header{Name: "odd", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3,
		PAXRecords: map[string]string{"SCHILY.xattr.system.lbuild-test": "x"}}, Body: "odd"}
	ob := mkTar(t, odd)
	oname := ChainID(name, diffID(ob))
	check(t, s.ApplyIndexed(ctx, oname, name, bytes.NewReader(ob)))
	odir := layerDirOf(t, root, oname)
	if indexed, _ := isIndexed(odir); indexed || exists(filepath.Join(odir, tarFile)) {
		t.Errorf("an unmappable layer kept as tar and index (indexed %v)", indexed)
	}
	if got := mustRead(t, filepath.Join(odir, "fs", "odd")); got != "odd" {
		t.Errorf("unpacked odd = %q", got)
	}
	v, err = s.View(ctx, "v2", oname)
	check(t, err)
	if got := mustRead(t, filepath.Join(v, "bin/sh")); got != "a shell" {
		t.Errorf("bin/sh over the unpacked layer: %q", got)
	}
	check(t, s.Remove(ctx, "v2"))
}

// layerDirOf is committed snapshot name's directory under root.
func layerDirOf(t *testing.T, root, name string) string {
	t.Helper()
	h, err := nameHex(name)
	check(t, err)
	return filepath.Join(root, "layers", h)
}
