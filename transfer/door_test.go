package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/store"
)

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// craftImage stores, in an attacker's store, an image whose layers are
// blobs (with their media types) and whose config lists diffIDs, whatever
// the blobs hold: no part of lbuild checks what it is given here. It is
// tagged ref.
func craftImage(t *testing.T, st *store.Store, ref string, blobs [][]byte, mts []types.MediaType, diffIDs []v1.Hash, edit func(*v1.ConfigFile, []v1.Descriptor)) *store.Image {
	t.Helper()
	cfg := &v1.ConfigFile{
		Architecture: "amd64", OS: "linux",
		Created: v1.Time{Time: time.Unix(1700000000, 0).UTC()},
		RootFS:  v1.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	var descs []v1.Descriptor
	for i, b := range blobs {
		h, n, err := st.PutBlob(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		descs = append(descs, v1.Descriptor{MediaType: mts[i], Digest: h, Size: n})
	}
	if edit != nil {
		edit(cfg, descs)
	}
	img, err := st.WriteImage(cfg, descs)
	if err != nil {
		t.Fatal(err)
	}
	// The attacker's own store tags what it can: an image whose layer has
	// another size than its manifest says is incomplete to a store, and
	// the tests need only its blobs (WriteImage's entry keeps them).
	if err := st.Tag(ref, img); errors.Is(err, store.ErrNotFound) {
		img.Refs = []string{ref}
		return img
	} else if err != nil {
		t.Fatal(err)
	}
	img, err = st.Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// dockerArchive writes img of st as a docker-archive with only
// manifest.json (as docker before 25 and podman write it), layers named by
// digest.
func dockerArchive(t *testing.T, st *store.Store, img *store.Image, tag string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := newArchiveWriter(&buf)
	e := dockerManifestEntry{Config: blobName(img.ID), RepoTags: []string{tag}}
	tw.file(e.Config, readBlob(t, st, img.ID))
	for _, l := range img.Layers {
		if !tw.blobs[l.Digest] {
			tw.blob(l.Digest, readBlob(t, st, l.Digest))
		}
		e.Layers = append(e.Layers, blobName(l.Digest))
	}
	mb, _ := json.Marshal([]dockerManifestEntry{e})
	tw.file("manifest.json", mb)
	tw.tw.Close()
	tw.bw.Flush()
	return buf.Bytes()
}

// ociArchive writes img of st as an OCI archive named tag.
func ociArchive(t *testing.T, st *store.Store, img *store.Image, tag string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Save(context.Background(), st, []*store.Image{img}, []string{tag}, &buf, FormatOCI); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pushRaw writes img of st to ref with go-containerregistry's remote.Write
// from the store's OCI layout, byte for byte, checking nothing.
func pushRaw(t *testing.T, st *store.Store, img *store.Image, ref string) {
	t.Helper()
	p, err := layout.FromPath(st.Dir())
	if err != nil {
		t.Fatal(err)
	}
	limg, err := p.Image(img.Manifest.Digest)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, limg); err != nil {
		t.Fatal(err)
	}
}

// storeState is what a refused image must leave unchanged: index.json and
// the base image's blobs.
type storeState struct {
	index []byte
	blobs map[v1.Hash][]byte
}

func snapshotState(t *testing.T, st *store.Store, base *store.Image) storeState {
	t.Helper()
	idx, err := os.ReadFile(filepath.Join(st.Dir(), "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	s := storeState{index: idx, blobs: map[v1.Hash][]byte{}}
	for _, d := range append([]v1.Descriptor{base.Manifest, {Digest: base.ID}}, base.Layers...) {
		s.blobs[d.Digest] = readBlob(t, st, d.Digest)
	}
	return s
}

func (s storeState) check(t *testing.T, st *store.Store, base *store.Image) {
	t.Helper()
	if now := snapshotState(t, st, base); !bytes.Equal(now.index, s.index) {
		t.Errorf("index.json changed:\nbefore %s\nafter  %s", s.index, now.index)
	} else {
		for h, b := range s.blobs {
			if !bytes.Equal(now.blobs[h], b) {
				t.Errorf("base blob %s changed", h)
			}
		}
	}
	got, err := st.Resolve(base.Refs[0])
	if err != nil || got.Manifest.Digest != base.Manifest.Digest {
		t.Errorf("base image %s: %v", base.Refs[0], err)
	}
}

// checkRefusal checks that err is one line saying what was refused and why.
func checkRefusal(t *testing.T, err error, class error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("the image was accepted")
	}
	msg := err.Error()
	if !errors.Is(err, class) || strings.Contains(msg, "\n") || !strings.HasSuffix(msg, "; refusing the image") {
		t.Errorf("error %q: want one line ending in '; refusing the image', matching %v", msg, class)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not say %q", msg, w)
		}
	}
	t.Log(msg)
}

// TestLyingDiffIDRefused: an image whose config claims the diff ID of a
// base layer the victim has, for a layer with other files, is refused by
// every door (docker-archive, OCI archive, registry), compressed or not,
// and leaves the victim's store as it was.
func TestLyingDiffIDRefused(t *testing.T) {
	ctx := context.Background()
	host := testRegistry(t, newCounter(), nil)
	dreg := startDockerRegistry(t, newCounter()) // Debian's docker-registry
	victim := openStore(t)
	base := makeImage(t, victim, "base:1", layerTar(t, map[string][]byte{"etc/os-release": []byte("ID=base\n")}))
	baseDiff := base.Config.RootFS.DiffIDs[0]
	evilTar := layerTar(t, map[string][]byte{"etc/os-release": []byte("ID=evil\n"), "bin/sh": []byte("#!evil\n")})

	attacker := openStore(t)
	variants := map[string]*store.Image{
		"gzip": craftImage(t, attacker, "evil:gzip", [][]byte{gzipBytes(t, evilTar)}, []types.MediaType{types.OCILayer}, []v1.Hash{baseDiff}, nil),
		"tar":  craftImage(t, attacker, "evil:tar", [][]byte{evilTar}, []types.MediaType{types.OCIUncompressedLayer}, []v1.Hash{baseDiff}, nil),
	}
	for vname, evil := range variants {
		pushRaw(t, attacker, evil, host+"/evil:"+vname)
		pushRaw(t, attacker, evil, dreg+"/evil:"+vname)
		doors := map[string]func(tag string) error{
			"docker-archive": func(tag string) error {
				_, err := Load(ctx, victim, bytes.NewReader(dockerArchive(t, attacker, evil, tag)))
				return err
			},
			"oci-archive": func(tag string) error {
				_, err := Load(ctx, victim, bytes.NewReader(ociArchive(t, attacker, evil, tag)))
				return err
			},
			"pull": func(string) error {
				_, err := Pull(ctx, victim, host+"/evil:"+vname)
				return err
			},
			"pull-docker-registry": func(string) error {
				_, err := Pull(ctx, victim, dreg+"/evil:"+vname)
				return err
			},
		}
		for door, try := range doors {
			t.Run(vname+"/"+door, func(t *testing.T) {
				before := snapshotState(t, victim, base)
				err := try("evil:" + vname)
				checkRefusal(t, err, ErrDigestMismatch, "layer 1 of ", "content has diff ID sha256:", "but the config claims "+baseDiff.String())
				before.check(t, victim, base)
				if _, err := victim.Resolve("evil:" + vname); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("hostile image tagged: %v", err)
				}
			})
		}
	}
	// A pulled layer that lies is not even stored.
	gz := variants["gzip"].Layers[0].Digest
	if victim.HasBlob(gz) {
		// Load stores blobs as they stream in; only a pull into a fresh
		// store shows it.
		fresh := openStore(t)
		Pull(ctx, fresh, host+"/evil:gzip")
		if fresh.HasBlob(gz) {
			t.Error("pull stored the lying layer")
		}
	}
}

// TestMalformedImagesRefused: images that break the rules every incoming
// image must keep are refused by load and pull in one line, leaving the
// store as it was.
func TestMalformedImagesRefused(t *testing.T) {
	ctx := context.Background()
	host := testRegistry(t, newCounter(), nil)
	victim := openStore(t)
	base := makeImage(t, victim, "base:1", layerTar(t, map[string][]byte{"etc/os-release": []byte("ID=base\n")}))
	l1 := layerTar(t, map[string][]byte{"a": []byte("a")})
	l2 := layerTar(t, map[string][]byte{"b": []byte("b")})
	d1, _, _ := v1.SHA256(bytes.NewReader(l1))
	d2, _, _ := v1.SHA256(bytes.NewReader(l2))
	gz := types.OCILayer
	attacker := openStore(t)
	cases := []struct {
		name    string
		img     *store.Image
		class   error
		want    string
		noPull  bool // not tried through a registry
		noDocks bool // a docker-archive cannot say it
	}{
		{
			name:  "fewer diff IDs than layers",
			img:   craftImage(t, attacker, "bad:short", [][]byte{gzipBytes(t, l1), gzipBytes(t, l2)}, []types.MediaType{gz, gz}, []v1.Hash{d1}, nil),
			class: ErrInvalidImage, want: "config lists 1 diff IDs but the manifest 2 layers",
		},
		{
			name:  "more diff IDs than layers",
			img:   craftImage(t, attacker, "bad:long", [][]byte{gzipBytes(t, l1)}, []types.MediaType{gz}, []v1.Hash{d1, d2}, nil),
			class: ErrInvalidImage, want: "config lists 2 diff IDs but the manifest 1 layers",
		},
		{
			name: "rootfs type",
			img: craftImage(t, attacker, "bad:rootfs", [][]byte{gzipBytes(t, l1)}, []types.MediaType{gz}, []v1.Hash{d1},
				func(c *v1.ConfigFile, _ []v1.Descriptor) { c.RootFS.Type = "bogus" }),
			class: ErrInvalidImage, want: `config rootfs type "bogus", want "layers"`,
		},
		{
			name: "foreign layer",
			img: craftImage(t, attacker, "bad:foreign", [][]byte{gzipBytes(t, l1)}, []types.MediaType{types.DockerForeignLayer}, []v1.Hash{d1},
				func(_ *v1.ConfigFile, ls []v1.Descriptor) { ls[0].URLs = []string{"https://example.invalid/layer"} }),
			class: ErrInvalidImage, want: "layer 1 of bad:foreign is a foreign layer", noDocks: true,
		},
		{
			name: "layer size",
			img: craftImage(t, attacker, "bad:size", [][]byte{gzipBytes(t, l1)}, []types.MediaType{gz}, []v1.Hash{d1},
				func(_ *v1.ConfigFile, ls []v1.Descriptor) { ls[0].Size++ }),
			class: ErrDigestMismatch, want: "but the manifest says", noDocks: true,
			noPull: true, // a wrong size is caught as the blob comes in (TestPullDigestMismatch)
		},
		{
			name:  "unknown layer type",
			img:   craftImage(t, attacker, "bad:type", [][]byte{l1}, []types.MediaType{"application/x-tar"}, []v1.Hash{d1}, nil),
			class: ErrInvalidImage, want: `layer 1 of bad:type has unknown media type "application/x-tar"`, noDocks: true,
		},
		{
			name:  "gzip layer that is not gzip",
			img:   craftImage(t, attacker, "bad:gz", [][]byte{l1}, []types.MediaType{gz}, []v1.Hash{d1}, nil),
			class: ErrInvalidImage, want: "layer 1 of bad:gz: content does not decompress as gzip", noDocks: true,
		},
	}
	for _, tc := range cases {
		tag := tc.img.Refs[0]
		doors := map[string]func() error{
			"oci-archive": func() error {
				_, err := Load(ctx, victim, bytes.NewReader(ociArchive(t, attacker, tc.img, tag)))
				return err
			},
		}
		if !tc.noDocks {
			doors["docker-archive"] = func() error {
				_, err := Load(ctx, victim, bytes.NewReader(dockerArchive(t, attacker, tc.img, tag)))
				return err
			}
		}
		if !tc.noPull {
			pushRaw(t, attacker, tc.img, host+"/"+tag)
			doors["pull"] = func() error {
				_, err := Pull(ctx, victim, host+"/"+tag)
				return err
			}
		}
		for door, try := range doors {
			t.Run(tc.name+"/"+door, func(t *testing.T) {
				before := snapshotState(t, victim, base)
				err := try()
				want := strings.ReplaceAll(tc.want, "bad:", map[bool]string{true: host + "/bad:", false: "bad:"}[door == "pull"])
				checkRefusal(t, err, tc.class, want)
				before.check(t, victim, base)
			})
		}
	}
}

// TestLoadRefusesWholeArchive: one bad image in an archive keeps the good
// ones out too, so a refused archive changes no tag.
func TestLoadRefusesWholeArchive(t *testing.T) {
	ctx := context.Background()
	victim := openStore(t)
	base := makeImage(t, victim, "base:1", layerTar(t, map[string][]byte{"etc/os-release": []byte("ID=base\n")}))
	attacker := openStore(t)
	good := makeImage(t, attacker, "good:1", layerTar(t, map[string][]byte{"g": []byte("good")}))
	l := layerTar(t, map[string][]byte{"x": []byte("x")})
	bad := craftImage(t, attacker, "bad:1", [][]byte{gzipBytes(t, l)}, []types.MediaType{types.OCILayer}, []v1.Hash{base.Config.RootFS.DiffIDs[0]}, nil)
	var buf bytes.Buffer
	if err := Save(ctx, attacker, []*store.Image{good, bad}, nil, &buf, FormatDocker); err != nil {
		t.Fatal(err)
	}
	before := snapshotState(t, victim, base)
	_, err := Load(ctx, victim, &buf)
	checkRefusal(t, err, ErrDigestMismatch, "layer 1 of bad:1")
	before.check(t, victim, base)
	if _, err := victim.Resolve("good:1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("good:1 of a refused archive was tagged: %v", err)
	}
}

// TestPulledDiffIDsRecorded: a pull records the diff IDs of the compressed
// layers it hashed, so a later check of the same blobs reads no layer.
func TestPulledDiffIDsRecorded(t *testing.T) {
	ctx := context.Background()
	host := testRegistry(t, newCounter(), nil)
	st := openStore(t)
	img := makeImage(t, st, "r:1", layerTar(t, map[string][]byte{"f": []byte("payload")}))
	if _, err := Push(ctx, st, img, host+"/r:1"); err != nil {
		t.Fatal(err)
	}
	st2 := openStore(t)
	pulled, err := Pull(ctx, st2, host+"/r:1")
	if err != nil {
		t.Fatal(err)
	}
	l := pulled.Layers[0]
	b, err := st2.Meta(metaDiffIDs, l.Digest.Hex)
	if err != nil || string(b) != "gzip "+img.Config.RootFS.DiffIDs[0].String()+"\n" {
		t.Errorf("diff ID record %q, %v", b, err)
	}
	// The record is a cache: without it the diff ID is computed again.
	if err := st2.SetMeta(metaDiffIDs, l.Digest.Hex, []byte("junk")); err != nil {
		t.Fatal(err)
	}
	if d, err := layerDiffID(ctx, st2, l); err != nil || d != img.Config.RootFS.DiffIDs[0] {
		t.Errorf("layerDiffID without a record: %s, %v", d, err)
	}
}
