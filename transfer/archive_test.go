package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/store"
)

func twoImages(t *testing.T, st *store.Store) (*store.Image, *store.Image) {
	base := layerTar(t, map[string][]byte{"etc/os-release": []byte("ID=test\n")})
	a := makeImage(t, st, "a:1", base, layerTar(t, map[string][]byte{"app/a.txt": []byte("I am A\n")}))
	b := makeImage(t, st, "b:1", base, layerTar(t, map[string][]byte{"app/b.txt": []byte("I am B\n")}))
	return a, b
}

func saveFile(t *testing.T, st *store.Store, format Format, imgs []*store.Image, refs []string, opts ...Opt) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "out.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := Save(context.Background(), st, imgs, refs, f, format, opts...); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func loadFile(t *testing.T, st *store.Store, p string) []*store.Image {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := Load(context.Background(), st, f)
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

func TestSaveLoadRoundTrip(t *testing.T) {
	st := openStore(t)
	a, b := twoImages(t, st)
	for _, format := range []Format{FormatDocker, FormatOCI} {
		t.Run(string(format), func(t *testing.T) {
			p := saveFile(t, st, format, []*store.Image{a, b}, nil)
			st2 := openStore(t)
			imgs := loadFile(t, st2, p)
			if len(imgs) != 2 {
				t.Fatalf("loaded %d images", len(imgs))
			}
			for _, want := range []*store.Image{a, b} {
				got, err := st2.Resolve(want.Refs[0])
				if err != nil {
					t.Fatal(err)
				}
				if got.Manifest.Digest != want.Manifest.Digest || got.ID != want.ID {
					t.Errorf("%s: loaded %s/%s, saved %s/%s", want.Refs[0], got.Manifest.Digest, got.ID, want.Manifest.Digest, want.ID)
				}
			}
			// Loading again stores nothing new.
			before := blobCount(t, st2)
			loadFile(t, st2, p)
			if after := blobCount(t, st2); after != before {
				t.Errorf("second load: %d blobs, before %d", after, before)
			}
		})
	}
}

func TestSaveCompressedAndGzipStream(t *testing.T) {
	st := openStore(t)
	a, _ := twoImages(t, st)
	p := saveFile(t, st, FormatDocker, []*store.Image{a}, []string{"renamed:2"}, WithCompression("zstd"))
	// The same compressed blobs a push would use.
	runs := compressRuns.Load()
	saveFile(t, st, FormatOCI, []*store.Image{a}, []string{"renamed:2"}, WithCompression("zstd"))
	if compressRuns.Load() != runs {
		t.Error("second save recompressed")
	}
	raw, _ := os.ReadFile(p)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	st2 := openStore(t)
	imgs, err := Load(context.Background(), st2, &gz)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].ID != a.ID || imgs[0].Refs[0] != "renamed:2" {
		t.Fatalf("loaded %+v", imgs)
	}
	for _, l := range imgs[0].Layers {
		if l.MediaType != types.OCILayerZStd {
			t.Errorf("layer media type %s", l.MediaType)
		}
	}
}

// docker-archive written by an older docker: <id>/layer.tar, <id>.json,
// manifest.json, no index.json.
func TestLoadLegacyDockerArchive(t *testing.T) {
	st := openStore(t)
	a, _ := twoImages(t, st)
	var buf bytes.Buffer
	tw := newArchiveWriter(&buf)
	cfgHex := a.ID.Hex
	cb := readBlob(t, st, a.ID)
	tw.file(cfgHex+".json", cb)
	var layers []string
	for i, l := range a.Layers {
		name := []string{"aaaa", "bbbb"}[i] + "/layer.tar"
		tw.file(name, readBlob(t, st, l.Digest))
		tw.file(filepath.Dir(name)+"/json", []byte("{}"))
		layers = append(layers, name)
	}
	mb, _ := json.Marshal([]dockerManifestEntry{{Config: cfgHex + ".json", RepoTags: []string{"legacy:1"}, Layers: layers}})
	tw.file("manifest.json", mb)
	tw.tw.Close()
	tw.bw.Flush()
	st2 := openStore(t)
	imgs, err := Load(context.Background(), st2, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].ID != a.ID {
		t.Fatalf("loaded %+v", imgs)
	}
	// Same config, same layers, same media types: WriteImage's manifest.
	if imgs[0].Manifest.Digest != a.Manifest.Digest {
		t.Errorf("manifest %s, want %s", imgs[0].Manifest.Digest, a.Manifest.Digest)
	}
}

func TestLoadRejectsCorruptBlob(t *testing.T) {
	st := openStore(t)
	a, _ := twoImages(t, st)
	var buf bytes.Buffer
	tw := newArchiveWriter(&buf)
	h := a.Layers[1].Digest
	tw.file(blobName(h), []byte("not the layer"))
	tw.tw.Close()
	tw.bw.Flush()
	st2 := openStore(t)
	_, err := Load(context.Background(), st2, &buf)
	if err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("load of a corrupt blob: %v", err)
	}
	if st2.HasBlob(h) || blobCount(t, st2) != 0 {
		t.Error("corrupt blob stored")
	}
}

func TestArchivesWithSkopeo(t *testing.T) {
	skopeo := lookTool(t, "skopeo")
	st := openStore(t)
	a, b := twoImages(t, st)

	// skopeo reads what Save writes, in both formats.
	p := saveFile(t, st, FormatDocker, []*store.Image{a, b}, nil)
	var insp struct {
		Architecture string
		Layers       []string
	}
	out := run(t, skopeo, "inspect", "docker-archive:"+p+":b:1")
	if err := json.Unmarshal([]byte(out), &insp); err != nil || insp.Architecture != "amd64" || len(insp.Layers) != 2 {
		t.Errorf("skopeo inspect docker-archive: %v\n%s", err, out)
	}
	po := saveFile(t, st, FormatOCI, []*store.Image{a}, nil)
	out = run(t, skopeo, "inspect", "oci-archive:"+po+":a:1")
	if err := json.Unmarshal([]byte(out), &insp); err != nil || len(insp.Layers) != 2 || insp.Layers[1] != a.Layers[1].Digest.String() {
		t.Errorf("skopeo inspect oci-archive: %v\n%s", err, out)
	}

	// What skopeo writes as a docker-archive loads, with the same image ID.
	da := filepath.Join(t.TempDir(), "skopeo.tar")
	run(t, skopeo, "copy", "oci:"+st.Dir()+":a:1", "docker-archive:"+da+":example.com/from/skopeo:v1")
	st2 := openStore(t)
	imgs := loadFile(t, st2, da)
	if len(imgs) != 1 || imgs[0].ID != a.ID {
		t.Fatalf("loaded %+v, want ID %s", imgs, a.ID)
	}
	if _, err := st2.Resolve("example.com/from/skopeo:v1"); err != nil {
		t.Errorf("skopeo's tag: %v (refs %v)", err, imgs[0].Refs)
	}
	// And what skopeo writes as an OCI archive.
	oa := filepath.Join(t.TempDir(), "skopeo-oci.tar")
	run(t, skopeo, "copy", "oci:"+st.Dir()+":b:1", "oci-archive:"+oa+":b:1")
	imgs = loadFile(t, openStore(t), oa)
	if len(imgs) != 1 || imgs[0].ID != b.ID {
		t.Fatalf("loaded %+v, want ID %s", imgs, b.ID)
	}
}

func TestSaveOCILayoutUmoci(t *testing.T) {
	umoci := lookTool(t, "umoci")
	st := openStore(t)
	a, b := twoImages(t, st)
	dir := filepath.Join(t.TempDir(), "layout")
	ctx := context.Background()
	if _, err := SaveOCILayout(ctx, st, a, "", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := SaveOCILayout(ctx, st, b, "b:1", dir, WithCompression("gzip")); err != nil {
		t.Fatal(err)
	}
	for ref, file := range map[string]string{"a:1": "a.txt", "b:1": "b.txt"} {
		bundle := filepath.Join(t.TempDir(), "bundle")
		run(t, umoci, "unpack", "--image", dir+":"+ref, bundle)
		if _, err := os.Stat(filepath.Join(bundle, "rootfs", "app", file)); err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
}

func readBlob(t *testing.T, st *store.Store, h interface{ String() string }) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(st.Dir(), "blobs", strings.Replace(h.String(), ":", "/", 1)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func blobCount(t *testing.T, st *store.Store) int {
	ents, err := os.ReadDir(filepath.Join(st.Dir(), "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	sort.Strings(names)
	return len(names)
}
