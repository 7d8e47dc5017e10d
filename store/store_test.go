package store

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

func newStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tarLayer returns an uncompressed tar holding files (sorted by name).
func tarLayer(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		hdr := &tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg,
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, files[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testConfig(cmd string, diffIDs ...v1.Hash) *v1.ConfigFile {
	return &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      v1.Time{Time: time.Unix(1700000000, 0).UTC()},
		Config:       v1.Config{Cmd: []string{cmd}, Env: []string{"PATH=/usr/bin:/bin"}},
		RootFS:       v1.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
}

// putImage stores a one-layer image holding files.
func putImage(t testing.TB, s *Store, cmd string, files map[string]string) *Image {
	t.Helper()
	layer := tarLayer(t, files)
	h, n, err := s.PutBlob(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.WriteImage(testConfig(cmd, h), []v1.Descriptor{{
		MediaType: types.OCIUncompressedLayer, Size: n, Digest: h,
	}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestOpenCreatesLayout(t *testing.T) {
	s := newStore(t)
	b, err := os.ReadFile(filepath.Join(s.Dir(), "oci-layout"))
	if err != nil || !strings.Contains(string(b), `"imageLayoutVersion":"1.0.0"`) {
		t.Fatalf("oci-layout = %q, %v", b, err)
	}
	var idx v1.IndexManifest
	b, err = os.ReadFile(filepath.Join(s.Dir(), "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != types.OCIImageIndex || idx.Manifests == nil {
		t.Fatalf("index.json = %s", b)
	}
	if fi, err := os.Stat(filepath.Join(s.Dir(), "blobs", "sha256")); err != nil || !fi.IsDir() {
		t.Fatalf("blobs/sha256: %v", err)
	}
	// Reopening keeps content.
	img := putImage(t, s, "x", map[string]string{"a": "a"})
	if err := s.Tag("app:1", img); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Resolve("app:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := layout.FromPath(s.Dir()); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesOtherLayoutVersion(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"2.0.0"}`), 0o644)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "imageLayoutVersion") {
		t.Fatalf("Open = %v, want imageLayoutVersion error", err)
	}
}

func TestOpenUnderRegularFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f, "store")
	_, err := Open(dir)
	if err == nil {
		t.Fatal("Open under a regular file succeeded")
	}
	if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "not writable") ||
		!errors.Is(err, unix.ENOTDIR) {
		t.Fatalf("unclear error: %v", err)
	}
}

func TestOpenReadOnlyMount(t *testing.T) {
	// Root ignores mode bits, so use a read-only tmpfs holding a valid layout.
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	if _, err := Open(mnt); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", mnt, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Skipf("cannot remount read-only: %v", err)
	}
	_, err := Open(mnt)
	if err == nil {
		t.Fatal("Open on a read-only mount succeeded")
	}
	if !strings.Contains(err.Error(), "not writable") || !errors.Is(err, unix.EROFS) {
		t.Fatalf("unclear error: %v", err)
	}
	t.Log(err)
}

func TestBlobWriterCommit(t *testing.T) {
	s := newStore(t)
	w, err := s.Writer()
	if err != nil {
		t.Fatal(err)
	}
	// Over two writeback chunks (writebackChunk), in pieces of odd sizes.
	data := bytes.Repeat([]byte("0123456789abcdefg"), 1_200_000)
	sizes := []int{4096, 1, 70001, 9999, 1 << 20}
	for i, k := 0, 0; i < len(data); k++ {
		n := min(sizes[k%len(sizes)], len(data)-i)
		if _, err := w.Write(data[i : i+n]); err != nil {
			t.Fatal(err)
		}
		i += n
	}
	// The blob being written has no name yet (O_TMPFILE): nothing a crash
	// could leave behind.
	if got := dirNames(t, filepath.Join(s.Dir(), ".ingest")); len(got) != 0 {
		t.Fatalf("named temp files during write: %v", got)
	}
	h, n, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if h != sha(data) || n != int64(len(data)) {
		t.Fatalf("Commit = %v %d, want %v %d", h, n, sha(data), len(data))
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close after Commit: %v", err)
	}
	if got := dirNames(t, filepath.Join(s.Dir(), ".ingest")); len(got) != 0 {
		t.Fatalf("temp files left: %v", got)
	}
	if !s.HasBlob(h) {
		t.Fatal("HasBlob = false")
	}
	if sz, err := s.BlobSize(h); err != nil || sz != n {
		t.Fatalf("BlobSize = %d, %v", sz, err)
	}
	rc, err := s.OpenBlob(h)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("blob content differs")
	}
	if s.BlobPath(h) != filepath.Join(s.Dir(), "blobs", "sha256", h.Hex) {
		t.Fatalf("BlobPath = %s", s.BlobPath(h))
	}
	if fi, _ := os.Stat(s.BlobPath(h)); fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("blob mode %v is writable", fi.Mode())
	}
	if _, _, err := w.Commit(); err == nil {
		t.Fatal("second Commit succeeded")
	}
}

func TestBlobWriterCloseWithoutCommit(t *testing.T) {
	s := newStore(t)
	w, err := s.Writer()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("abandoned"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, filepath.Join(s.Dir(), ".ingest")); len(got) != 0 {
		t.Fatalf("temp files left: %v", got)
	}
	if got := dirNames(t, filepath.Join(s.Dir(), "blobs", "sha256")); len(got) != 0 {
		t.Fatalf("blobs stored: %v", got)
	}
	if s.HasBlob(sha([]byte("abandoned"))) {
		t.Fatal("abandoned blob stored")
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestPutBlobTwiceStoredOnce(t *testing.T) {
	s := newStore(t)
	h1, n1, err := s.PutBlob(strings.NewReader("same"))
	if err != nil {
		t.Fatal(err)
	}
	h2, n2, err := s.PutBlob(strings.NewReader("same"))
	if err != nil {
		t.Fatal(err)
	}
	if h1 != h2 || n1 != n2 || n1 != 4 {
		t.Fatalf("%v/%d vs %v/%d", h1, n1, h2, n2)
	}
	if got := dirNames(t, filepath.Join(s.Dir(), "blobs", "sha256")); len(got) != 1 {
		t.Fatalf("blobs = %v, want one", got)
	}
	if got := dirNames(t, filepath.Join(s.Dir(), ".ingest")); len(got) != 0 {
		t.Fatalf("temp files left: %v", got)
	}
}

func TestConcurrentPutSameBlob(t *testing.T) {
	s := newStore(t)
	data := bytes.Repeat([]byte("x"), 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			if _, _, err := s.PutBlob(bytes.NewReader(data)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	b, err := os.ReadFile(s.BlobPath(sha(data)))
	if err != nil || !bytes.Equal(b, data) {
		t.Fatalf("blob after concurrent puts: %v", err)
	}
}

func TestNotFound(t *testing.T) {
	s := newStore(t)
	h := sha([]byte("nope"))
	if _, err := s.OpenBlob(h); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenBlob = %v", err)
	}
	if _, err := s.BlobSize(h); !errors.Is(err, ErrNotFound) {
		t.Fatalf("BlobSize = %v", err)
	}
	if _, err := s.Image(h); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Image = %v", err)
	}
	if err := s.Untag("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Untag = %v", err)
	}
	if _, err := s.Resolve("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve = %v", err)
	}
	if _, err := s.WriteImage(testConfig("x", h), []v1.Descriptor{{MediaType: types.OCIUncompressedLayer, Digest: h, Size: 4}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("WriteImage with missing layer = %v", err)
	}
	// A path-like digest must not escape the store.
	if s.HasBlob(v1.Hash{Algorithm: "sha256", Hex: "../../oci-layout"}) {
		t.Fatal("HasBlob accepted a path")
	}
	if _, err := s.OpenBlob(v1.Hash{Algorithm: "sha256", Hex: "../index.json"}); err == nil {
		t.Fatal("OpenBlob accepted a path")
	}
}

func TestWriteImageReadableByGGCR(t *testing.T) {
	s := newStore(t)
	img := putImage(t, s, "run", map[string]string{"etc/hello": "hello world\n"})
	if err := s.Tag("app:1", img); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	ii, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations[AnnotationRefName] != "app:1" ||
		im.Manifests[0].Digest != img.Manifest.Digest {
		t.Fatalf("index = %+v", im.Manifests)
	}
	gimg, err := p.Image(img.Manifest.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateImage(t, gimg); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	mt, _ := gimg.MediaType()
	if mt != types.OCIManifestSchema1 {
		t.Fatalf("media type %s", mt)
	}
	m, _ := gimg.Manifest()
	if m.Config.MediaType != types.OCIConfigJSON || m.SchemaVersion != 2 ||
		len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCIUncompressedLayer {
		t.Fatalf("manifest = %+v", m)
	}
	id, _ := gimg.ConfigName()
	if id != img.ID {
		t.Fatalf("ConfigName %v != ID %v", id, img.ID)
	}
	// Stored config bytes are the JSON of the ConfigFile, marshaled once.
	want, _ := json.Marshal(img.Config)
	if sha(want) != img.ID {
		t.Fatal("config digest is not the sha256 of the config JSON")
	}
	got, err := s.Image(img.Manifest.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != img.ID || got.Manifest.Digest != img.Manifest.Digest || got.Manifest.Size != img.Manifest.Size || got.Manifest.MediaType != img.Manifest.MediaType || len(got.Layers) != 1 ||
		got.Config.Config.Cmd[0] != "run" || strings.Join(got.Refs, ",") != "app:1" {
		t.Fatalf("Image = %+v", got)
	}
}

// TestGzipLayer stores a gzip layer as a caller pulling a base image would;
// go-containerregistry reads it back and (with -tags validate) its full
// validate.Image passes.
func TestGzipLayer(t *testing.T) {
	s := newStore(t)
	raw := tarLayer(t, map[string]string{"etc/os-release": "ID=test\n"})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	h, n, err := s.PutBlob(&gz)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.WriteImage(testConfig("sh", sha(raw)), []v1.Descriptor{{MediaType: types.OCILayer, Size: n, Digest: h}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag("base", img); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	gimg, err := p.Image(img.Manifest.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateImage(t, gimg); err != nil {
		t.Fatal(err)
	}
}

func TestWriteImageNoLayers(t *testing.T) {
	s := newStore(t)
	img, err := s.WriteImage(testConfig("scratch"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(s.BlobPath(img.Manifest.Digest))
	if !strings.Contains(string(b), `"layers":[]`) {
		t.Fatalf("manifest = %s", b)
	}
}

func TestUntaggedImageKept(t *testing.T) {
	s := newStore(t)
	img := putImage(t, s, "x", map[string]string{"f": "1"})
	imgs, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].Manifest.Digest != img.Manifest.Digest || len(imgs[0].Refs) != 0 {
		t.Fatalf("Images = %+v", imgs)
	}
	// Writing the same image again adds nothing.
	img2 := putImage(t, s, "x", map[string]string{"f": "1"})
	if img2.Manifest.Digest != img.Manifest.Digest {
		t.Fatal("same image, different manifest")
	}
	idx, _ := s.readIndex()
	if len(idx.Manifests) != 1 || idx.Manifests[0].Annotations != nil {
		t.Fatalf("index = %+v", idx.Manifests)
	}
	// Tagging replaces the untagged entry.
	if err := s.Tag("app", img); err != nil {
		t.Fatal(err)
	}
	idx, _ = s.readIndex()
	if len(idx.Manifests) != 1 || idx.Manifests[0].Annotations[AnnotationRefName] != "app:latest" {
		t.Fatalf("index = %+v", idx.Manifests)
	}
	// GC keeps an untagged image too.
	other := putImage(t, s, "y", map[string]string{"g": "2"})
	if _, err := s.GC(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image(other.Manifest.Digest); err != nil {
		t.Fatalf("untagged image collected: %v", err)
	}
}

func TestTagReplacesAndMultipleTags(t *testing.T) {
	s := newStore(t)
	a := putImage(t, s, "a", map[string]string{"f": "a"})
	b := putImage(t, s, "b", map[string]string{"f": "b"})
	for _, ref := range []string{"app:1", "app:2", "other"} {
		if err := s.Tag(ref, a); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Resolve("app:1")
	if err != nil || got.ID != a.ID {
		t.Fatalf("Resolve app:1 = %v, %v", got, err)
	}
	sort.Strings(got.Refs)
	if strings.Join(got.Refs, ",") != "app:1,app:2,other:latest" {
		t.Fatalf("Refs = %v", got.Refs)
	}
	if err := s.Tag("app:1", b); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Resolve("app:1"); got.ID != b.ID {
		t.Fatal("Tag did not replace app:1")
	}
	if got, _ := s.Resolve("app:2"); got.ID != a.ID {
		t.Fatal("app:2 moved")
	}
	idx, _ := s.readIndex()
	n := 0
	for _, d := range idx.Manifests {
		if d.Annotations[AnnotationRefName] == "app:1" {
			n++
		}
	}
	if n != 1 || len(idx.Manifests) != 3 {
		t.Fatalf("index = %+v", idx.Manifests)
	}
	imgs, _ := s.Images()
	if len(imgs) != 2 {
		t.Fatalf("Images = %d, want 2", len(imgs))
	}
	// Retagging the same image is idempotent.
	if err := s.Tag("app:2", a); err != nil {
		t.Fatal(err)
	}
	if idx2, _ := s.readIndex(); len(idx2.Manifests) != 3 {
		t.Fatalf("index grew: %+v", idx2.Manifests)
	}
	if err := s.Tag("", a); err == nil {
		t.Fatal("empty ref accepted")
	}
}

func TestUntagAndRemove(t *testing.T) {
	s := newStore(t)
	a := putImage(t, s, "a", map[string]string{"f": "a"})
	s.Tag("app:1", a)
	s.Tag("app", a)
	if err := s.Untag("app"); err != nil { // normalized to app:latest
		t.Fatal(err)
	}
	if _, err := s.Resolve("app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve after Untag = %v", err)
	}
	if err := s.Untag("app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Untag = %v", err)
	}
	if got, err := s.Resolve("app:1"); err != nil || len(got.Refs) != 1 {
		t.Fatalf("app:1 = %+v, %v", got, err)
	}
	s.Tag("app:2", a)
	if err := s.Remove(a); err != nil {
		t.Fatal(err)
	}
	if imgs, _ := s.Images(); len(imgs) != 0 {
		t.Fatalf("Images after Remove = %d", len(imgs))
	}
	if err := s.Remove(a); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove = %v", err)
	}
	if !s.HasBlob(a.Manifest.Digest) {
		t.Fatal("Remove deleted blobs before GC")
	}
}

// collidingConfigs returns two configs whose digests share their first 4 hex
// digits.
func collidingConfigs(t *testing.T) (*v1.ConfigFile, *v1.ConfigFile) {
	seen := map[string]*v1.ConfigFile{}
	for i := 0; i < 1_000_000; i++ {
		c := testConfig("c" + strconv.Itoa(i))
		b, _ := json.Marshal(c)
		p := sha(b).Hex[:4]
		if o, ok := seen[p]; ok {
			return o, c
		}
		seen[p] = c
	}
	t.Fatal("no collision")
	return nil, nil
}

func TestResolve(t *testing.T) {
	s := newStore(t)
	a := putImage(t, s, "a", map[string]string{"f": "a"})
	b := putImage(t, s, "b", map[string]string{"f": "b"})
	s.Tag("app", a)
	s.Tag("app:1", b)
	s.Tag("reg.example:5000/team/app", b)
	c1, c2 := collidingConfigs(t)
	x, err := s.WriteImage(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	y, err := s.WriteImage(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in    string
		want  *Image
		wantE error
		msg   string
	}{
		{in: "app", want: a},
		{in: "app:latest", want: a},
		{in: "app:1", want: b},
		{in: "reg.example:5000/team/app", want: b},
		{in: "reg.example:5000/team/app:latest", want: b},
		{in: a.ID.String(), want: a},
		{in: a.ID.Hex, want: a},
		{in: a.ID.Hex[:12], want: a},
		{in: "sha256:" + b.ID.Hex[:12], want: b},
		{in: strings.ToUpper(b.ID.Hex[:8]), want: b},
		{in: b.Manifest.Digest.String(), want: b},
		{in: b.Manifest.Digest.Hex, want: b},
		{in: x.ID.Hex[:5], want: x},
		{in: y.ID.Hex[:5], want: y},
		{in: x.ID.Hex[:4], msg: "ambiguous"},
		{in: a.ID.Hex[:3], wantE: ErrNotFound},
		{in: "app:2", wantE: ErrNotFound},
		{in: "ffffffffffff", wantE: ErrNotFound},
		{in: "sha256:zzzz", wantE: ErrNotFound},
	} {
		got, err := s.Resolve(tc.in)
		switch {
		case tc.wantE != nil || tc.msg != "":
			if err == nil || (tc.wantE != nil && !errors.Is(err, tc.wantE)) ||
				(tc.msg != "" && (!strings.Contains(err.Error(), tc.msg) || errors.Is(err, ErrNotFound))) {
				t.Errorf("Resolve(%q) = %v, %v; want error %v %q", tc.in, got, err, tc.wantE, tc.msg)
			}
		case err != nil:
			t.Errorf("Resolve(%q): %v", tc.in, err)
		case got.Manifest.Digest != tc.want.Manifest.Digest || got.ID != tc.want.ID:
			t.Errorf("Resolve(%q) = %v, want %v", tc.in, got.ID, tc.want.ID)
		}
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"app":                      "app:latest",
		"app:1":                    "app:1",
		"host:5000/app":            "host:5000/app:latest",
		"host:5000/app:v2":         "host:5000/app:v2",
		"docker.io/library/alpine": "docker.io/library/alpine:latest",
		"app@sha256:abcd":          "app@sha256:abcd",
	} {
		if got := NormalizeRef(in); got != want {
			t.Errorf("NormalizeRef(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConcurrentTagGoroutines(t *testing.T) {
	s := newStore(t)
	img := putImage(t, s, "a", map[string]string{"f": "a"})
	var wg sync.WaitGroup
	errs := make(chan error, 80)
	for g := range 8 {
		wg.Go(func() {
			// Each goroutine opens its own Store, like separate processes do.
			s2, err := Open(s.Dir())
			if err != nil {
				errs <- err
				return
			}
			for i := range 10 {
				if err := s2.Tag(fmt.Sprintf("g%d:%d", g, i), img); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := s.Resolve("g0:0")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Refs) != 80 {
		t.Fatalf("%d refs, want 80", len(got.Refs))
	}
}

const helperEnv = "LBUILD_STORE_TAG_HELPER"

// TestHelperTagProcess is run in child processes by TestConcurrentTagProcesses.
func TestHelperTagProcess(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process")
	}
	dir, prefix, _ := strings.Cut(spec, "|")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := s.Images()
	if err != nil || len(imgs) == 0 {
		t.Fatalf("Images: %v %v", imgs, err)
	}
	img := putImage(t, s, prefix, map[string]string{"f": prefix})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 25 {
				target := imgs[0]
				if i%2 == 1 {
					target = img
				}
				if err := s.Tag(fmt.Sprintf("%s%d:%d", prefix, g, i), target); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
}

func TestConcurrentTagProcesses(t *testing.T) {
	s := newStore(t)
	putImage(t, s, "base", map[string]string{"f": "base"})
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for _, prefix := range []string{"p", "q"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperTagProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"="+s.Dir()+"|"+prefix)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		outs = append(outs, &out)
	}
	// And this process tags at the same time.
	base, _ := s.Images()
	for i := range 25 {
		if err := s.Tag(fmt.Sprintf("main:%d", i), base[0]); err != nil {
			t.Fatal(err)
		}
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper: %v\n%s", err, outs[i])
		}
	}
	idx, err := s.readIndex()
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]bool{}
	for _, d := range idx.Manifests {
		refs[d.Annotations[AnnotationRefName]] = true
	}
	for _, prefix := range []string{"p", "q"} {
		for g := range 4 {
			for i := range 25 {
				if r := fmt.Sprintf("%s%d:%d", prefix, g, i); !refs[r] {
					t.Errorf("lost tag %s", r)
				}
			}
		}
	}
	for i := range 25 {
		if r := fmt.Sprintf("main:%d", i); !refs[r] {
			t.Errorf("lost tag %s", r)
		}
	}
	if len(refs) != 2*4*25+25 {
		t.Errorf("%d refs in index, want %d", len(refs), 2*4*25+25)
	}
	if _, err := layout.FromPath(s.Dir()); err != nil {
		t.Fatal(err)
	}
}

func TestGC(t *testing.T) {
	s := newStore(t)
	shared := map[string]string{"f": "shared"}
	a := putImage(t, s, "a", shared)
	b := putImage(t, s, "b", shared) // same layer as a
	c := putImage(t, s, "c", map[string]string{"f": "only-c"})
	s.Tag("a", a)
	s.Tag("b", b)
	s.Tag("c", c)
	kept, _, _ := s.PutBlob(strings.NewReader("held by the build cache"))
	loose, looseN, _ := s.PutBlob(strings.NewReader("garbage"))

	// A live writer and a temp file left by a crashed process.
	w, err := s.Writer()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("in progress"))
	old := time.Now().Add(-time.Hour)
	os.Chtimes(w.f.Name(), old, old) // even old, it is locked
	stale := filepath.Join(s.Dir(), ".ingest", "blob-crashed")
	os.WriteFile(stale, []byte("x"), 0o644)
	os.Chtimes(stale, old, old)

	if err := s.Untag("b"); err != nil { // b's manifest+config become garbage, its layer not
		t.Fatal(err)
	}
	if err := s.Remove(c); err != nil {
		t.Fatal(err)
	}
	var want int64 = looseN
	for _, h := range []v1.Hash{b.Manifest.Digest, b.ID, c.Manifest.Digest, c.ID, c.Layers[0].Digest} {
		n, err := s.BlobSize(h)
		if err != nil {
			t.Fatal(err)
		}
		want += n
	}
	freed, err := s.GC(func(h v1.Hash) bool { return h == kept })
	if err != nil {
		t.Fatal(err)
	}
	if freed != want {
		t.Errorf("freed %d, want %d", freed, want)
	}
	for _, h := range []v1.Hash{a.Manifest.Digest, a.ID, a.Layers[0].Digest, kept} {
		if !s.HasBlob(h) {
			t.Errorf("GC deleted live blob %s", h)
		}
	}
	for _, h := range []v1.Hash{b.Manifest.Digest, b.ID, c.Manifest.Digest, c.ID, c.Layers[0].Digest, loose} {
		if s.HasBlob(h) {
			t.Errorf("GC kept garbage blob %s", h)
		}
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("stale temp file kept")
	}
	if _, err := os.Stat(w.f.Name()); err != nil {
		t.Errorf("live writer's temp file deleted: %v", err)
	}
	if h, _, err := w.Commit(); err != nil || !s.HasBlob(h) {
		t.Fatalf("Commit after GC: %v", err)
	}
	gimg, err := s.Resolve("a")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := layout.FromPath(s.Dir())
	li, err := p.Image(gimg.Manifest.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateImage(t, li); err != nil {
		t.Fatal(err)
	}
	// Nothing left to free.
	if freed, err := s.GC(func(h v1.Hash) bool { return true }); err != nil || freed != 0 {
		t.Fatalf("second GC = %d, %v", freed, err)
	}
}

func TestGCGrace(t *testing.T) {
	s, err := Open(t.TempDir(), WithGCGrace(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	fresh, _, _ := s.PutBlob(strings.NewReader("fresh"))
	old, _, _ := s.PutBlob(strings.NewReader("old"))
	past := time.Now().Add(-2 * time.Hour)
	os.Chtimes(s.BlobPath(old), past, past)
	if _, err := s.GC(nil); err != nil {
		t.Fatal(err)
	}
	if !s.HasBlob(fresh) || s.HasBlob(old) {
		t.Fatalf("fresh kept %v, old kept %v", s.HasBlob(fresh), s.HasBlob(old))
	}
}

// TestGCConcurrentWithBuilds runs GC in a loop while images are written and
// tagged; every tagged image must stay complete.
func TestGCConcurrentWithBuilds(t *testing.T) {
	s := newStore(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.GC(nil); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for i := range 30 {
		img, err := s.WriteImage(testConfig(strconv.Itoa(i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Tag(fmt.Sprintf("app:%d", i), img); err != nil {
			t.Fatal(err)
		}
	}
	imgs, err := s.Images()
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 30 {
		t.Fatalf("%d complete images, want 30", len(imgs))
	}
}

func TestSkopeoAndUmoci(t *testing.T) {
	for _, bin := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not on PATH", bin)
		}
	}
	s := newStore(t)
	img := putImage(t, s, "/bin/true", map[string]string{"etc/greeting": "hello from lbuild\n"})
	if err := s.Tag("app:1", img); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("skopeo", "inspect", "oci:"+s.Dir()+":app:1").CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, out)
	}
	var info struct {
		Digest string
		Layers []string
		Os     string
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("skopeo output: %v\n%s", err, out)
	}
	if info.Digest != img.Manifest.Digest.String() || len(info.Layers) != 1 || info.Os != "linux" {
		t.Fatalf("skopeo inspect = %s", out)
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	out, err = exec.Command("umoci", "unpack", "--image", s.Dir()+":app:1", bundle).CombinedOutput()
	if err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(bundle, "rootfs", "etc", "greeting"))
	if err != nil || string(got) != "hello from lbuild\n" {
		t.Fatalf("unpacked greeting = %q, %v", got, err)
	}
	// Our own temp dir and lock file do not upset the tools.
	if _, err := os.Stat(filepath.Join(s.Dir(), ".index.lock")); err != nil {
		t.Fatal(err)
	}
}

// A writer killed with SIGKILL half way through a blob leaves no file in the
// store: no ingest file, no blob.
func TestKilledWriterLeavesNothing(t *testing.T) {
	if dir := os.Getenv("LBUILD_TEST_KILLED_WRITER"); dir != "" {
		s, err := Open(dir)
		if err != nil {
			os.Exit(2)
		}
		w, err := s.Writer()
		if err != nil {
			os.Exit(3)
		}
		w.Write(bytes.Repeat([]byte("x"), 1<<20))
		os.Stdout.WriteString("written\n")
		time.Sleep(time.Minute) // killed here
		os.Exit(0)
	}
	s := newStore(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriterLeavesNothing$")
	cmd.Env = append(os.Environ(), "LBUILD_TEST_KILLED_WRITER="+s.Dir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	cmd.Process.Kill()
	cmd.Wait()
	if line != "written\n" {
		t.Fatalf("writer process said %q", line)
	}
	if got := dirNames(t, filepath.Join(s.Dir(), ".ingest")); len(got) != 0 {
		t.Fatalf("killed writer left %v in .ingest", got)
	}
	if got := dirNames(t, filepath.Join(s.Dir(), "blobs", "sha256")); len(got) != 0 {
		t.Fatalf("killed writer left blobs %v", got)
	}
}

// Writing an image that is stored already rewrites neither its config nor
// its manifest, but refreshes their mtimes (what GC's grace period reads).
func TestWriteImageAgainKeepsBlobsRefreshed(t *testing.T) {
	s := newStore(t)
	img, err := s.WriteImage(testConfig("again"), nil)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	inodes := map[v1.Hash]uint64{}
	for _, h := range []v1.Hash{img.ID, img.Manifest.Digest} {
		if err := os.Chtimes(s.BlobPath(h), old, old); err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(s.BlobPath(h), &st); err != nil {
			t.Fatal(err)
		}
		inodes[h] = st.Ino
	}
	img2, err := s.WriteImage(testConfig("again"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if img2.ID != img.ID || img2.Manifest.Digest != img.Manifest.Digest {
		t.Fatalf("same image written twice: %v %v, then %v %v", img.ID, img.Manifest.Digest, img2.ID, img2.Manifest.Digest)
	}
	for h, ino := range inodes {
		var st syscall.Stat_t
		if err := syscall.Stat(s.BlobPath(h), &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != ino {
			t.Errorf("blob %s was written again", h)
		}
		if fi, _ := os.Stat(s.BlobPath(h)); !fi.ModTime().After(old.Add(time.Hour)) {
			t.Errorf("blob %s: mtime %v not refreshed", h, fi.ModTime())
		}
	}
}

// A config or manifest blob damaged on disk (another size) is replaced when
// the image is written again.
func TestWriteImageReplacesDamagedSmallBlob(t *testing.T) {
	s := newStore(t)
	img, err := s.WriteImage(testConfig("damaged"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := s.BlobPath(img.ID)
	want, _ := os.ReadFile(p)
	os.Chmod(p, 0o644)
	if err := os.Truncate(p, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteImage(testConfig("damaged"), nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, want) {
		t.Errorf("damaged config blob not replaced: %q", got)
	}
}
