package transfer

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/store"
)

func TestPushPullRoundTrip(t *testing.T) {
	ctx := context.Background()
	cnt := newCounter()
	host := testRegistry(t, cnt, nil)
	st := openStore(t)
	base := layerTar(t, map[string][]byte{"etc/base": []byte("base\n")})
	img := makeImage(t, st, "app:1", base,
		layerTar(t, map[string][]byte{"app/data": randomBytes(t, 100<<10)}),
		layerTar(t, map[string][]byte{"app/conf": []byte("x=1\n")}))

	ref := host + "/app:1"
	var out bytes.Buffer
	runs := compressRuns.Load()
	dgst, err := Push(ctx, st, img, ref, WithProgress(&out))
	if err != nil {
		t.Fatal(err)
	}
	if got := compressRuns.Load() - runs; got != 3 {
		t.Errorf("first push compressed %d layers, want 3", got)
	}
	if n := strings.Count(out.String(), ": Pushed"); n != 3 {
		t.Errorf("first push: %d Pushed lines, want 3:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "1: digest: "+dgst.String()) {
		t.Errorf("no digest line for %s:\n%s", dgst, out.String())
	}
	if got := cnt.get("commit"); got != 4 { // 3 layers + config
		t.Errorf("first push committed %d blobs, want 4", got)
	}

	// A second push sends nothing new and compresses nothing.
	checkRepushIdle(t, ctx, st, img, ref, cnt, dgst, 3)

	// Pull into an empty store: same manifest, gzip layers, same image ID.
	st2 := openStore(t)
	cnt.reset()
	out.Reset()
	pulled, err := Pull(ctx, st2, ref, WithProgress(&out))
	if err != nil {
		t.Fatal(err)
	}
	if pulled.Manifest.Digest != dgst {
		t.Errorf("pulled manifest %s, pushed %s", pulled.Manifest.Digest, dgst)
	}
	if pulled.ID != img.ID {
		t.Errorf("pulled image ID %s, pushed %s", pulled.ID, img.ID)
	}
	for _, l := range pulled.Layers {
		if l.MediaType != types.OCILayer {
			t.Errorf("pulled layer media type %s, want %s", l.MediaType, types.OCILayer)
		}
	}
	if n := strings.Count(out.String(), ": Pull complete"); n != 3 {
		t.Errorf("%d 'Pull complete' lines, want 3:\n%s", n, out.String())
	}
	if got, err := st2.Resolve(ref); err != nil || got.Manifest.Digest != dgst {
		t.Errorf("pulled image not tagged %s: %v", ref, err)
	}
	if got := cnt.get("get"); got != 4 {
		t.Errorf("pull fetched %d blobs, want 4", got)
	}

	// Pulling again fetches no blob.
	cnt.reset()
	out.Reset()
	if _, err := Pull(ctx, st2, ref, WithProgress(&out)); err != nil {
		t.Fatal(err)
	}
	if got := cnt.get("get"); got != 0 {
		t.Errorf("second pull fetched %d blobs", got)
	}
	if n := strings.Count(out.String(), ": Already exists"); n != 3 || !strings.Contains(out.String(), "Image is up to date") {
		t.Errorf("second pull output:\n%s", out.String())
	}

	// Pushing the pulled image elsewhere sends identical digests and
	// recompresses nothing.
	runs = compressRuns.Load()
	dgst3, err := Push(ctx, st2, pulled, host+"/copy:1")
	if err != nil {
		t.Fatal(err)
	}
	if dgst3 != dgst || compressRuns.Load() != runs {
		t.Errorf("re-push of pulled image: digest %s (want %s), compressions %d", dgst3, dgst, compressRuns.Load()-runs)
	}
}

func TestPushZstd(t *testing.T) {
	ctx := context.Background()
	cnt := newCounter()
	host := testRegistry(t, cnt, nil)
	st := openStore(t)
	img := makeImage(t, st, "z:1", layerTar(t, map[string][]byte{"a": bytes.Repeat([]byte("zstd "), 10000)}))
	gz, err := Push(ctx, st, img, host+"/z:gzip")
	if err != nil {
		t.Fatal(err)
	}
	zs, err := Push(ctx, st, img, host+"/z:zstd", WithCompression("zstd,level=5"))
	if err != nil {
		t.Fatal(err)
	}
	if gz == zs {
		t.Fatal("gzip and zstd pushes gave the same manifest")
	}
	st2 := openStore(t)
	pulled, err := Pull(ctx, st2, host+"/z:zstd")
	if err != nil {
		t.Fatal(err)
	}
	if mt := pulled.Layers[0].MediaType; mt != types.OCILayerZStd {
		t.Errorf("media type %s, want zstd", mt)
	}
	// Both compressed forms are remembered.
	ents, _ := os.ReadDir(filepath.Join(st.Dir(), ".compressed"))
	if len(ents) != 2 {
		t.Errorf(".compressed has %d entries, want 2", len(ents))
	}
	keep, err := KeepCompressed(st, nil)
	if err != nil || len(keep) != 2 {
		t.Errorf("KeepCompressed = %v, %v", keep, err)
	}
}

func TestParseCompression(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		bad  bool
	}{
		{"", "gzip,level=6", false},
		{"gzip", "gzip,level=6", false},
		{"zstd", "zstd,level=3", false},
		{"zstd,level=19", "zstd,level=19", false},
		{"gzip,level=1", "gzip,level=1", false},
		{"gzip,level=10", "", true},
		{"lz4", "", true},
		{"zstd,speed=1", "", true},
	} {
		c, err := ParseCompression(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("%q: err %v", tc.in, err)
			continue
		}
		if !tc.bad && c.String() != tc.want {
			t.Errorf("%q = %s, want %s", tc.in, c, tc.want)
		}
	}
}

func TestPullDigestMismatch(t *testing.T) {
	ctx := context.Background()
	cnt := newCounter()
	var bad string
	corrupt := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if bad != "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+bad) {
				rec := &bodyRewriter{ResponseWriter: w}
				h.ServeHTTP(rec, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	host := testRegistry(t, cnt, corrupt)
	st := openStore(t)
	img := makeImage(t, st, "m:1", layerTar(t, map[string][]byte{"f": []byte("payload")}))
	if _, err := Push(ctx, st, img, host+"/m:1"); err != nil {
		t.Fatal(err)
	}
	st2 := openStore(t)
	pulledOK, err := Pull(ctx, openStore(t), host+"/m:1")
	if err != nil {
		t.Fatal(err)
	}
	layer := pulledOK.Layers[0].Digest
	bad = layer.String()
	_, err = Pull(ctx, st2, host+"/m:1")
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("pull of corrupted blob: err = %v, want ErrDigestMismatch", err)
	}
	if st2.HasBlob(layer) {
		t.Error("corrupted layer was stored")
	}
	if ents, _ := os.ReadDir(filepath.Join(st2.Dir(), ".ingest")); len(ents) != 0 {
		t.Errorf(".ingest not empty: %v", ents)
	}
	if _, err := st2.Resolve(host + "/m:1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("image tagged after failed pull: %v", err)
	}

	// putVerified itself: wrong content for a digest is refused.
	other := v1.Descriptor{Digest: layer, Size: 3}
	if err := putVerified(st2, strings.NewReader("abc"), other); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("putVerified: %v", err)
	}
	if st2.HasBlob(layer) {
		t.Error("putVerified stored a mismatching blob")
	}
}

// bodyRewriter flips the first byte of the response body.
type bodyRewriter struct {
	http.ResponseWriter
	done bool
}

func (b *bodyRewriter) Write(p []byte) (int, error) {
	if !b.done && len(p) > 0 {
		q := append([]byte{}, p...)
		q[0] ^= 0xff
		b.done = true
		return b.ResponseWriter.Write(q)
	}
	return b.ResponseWriter.Write(p)
}

func TestUnreachableRegistry(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	// Port 1: nothing listens there.
	for _, ref := range []string{"127.0.0.1:1/x:y", "nonexistent.invalid/x:y"} {
		_, err := Pull(ctx, st, ref)
		if err == nil {
			t.Errorf("pull %s succeeded", ref)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "pull "+ref+":") || strings.Contains(msg, "\n") {
			t.Errorf("pull %s: unclear error %q", ref, msg)
		}
		t.Logf("pull %s: %v", ref, err)
	}
	img := makeImage(t, st, "p:1", layerTar(t, map[string][]byte{"f": []byte("x")}))
	if _, err := Push(ctx, st, img, "127.0.0.1:1/x:y"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("push to closed port: %v", err)
	}
	if _, err := Pull(ctx, st, "UPPER/case:x"); err == nil || !strings.Contains(err.Error(), "invalid reference") {
		t.Errorf("bad ref: %v", err)
	}
}

func TestPullManifestListPlatform(t *testing.T) {
	ctx := context.Background()
	host := testRegistry(t, newCounter(), nil)
	idx := v1.ImageIndex(empty.Index)
	digests := map[string]v1.Hash{}
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		digests[arch] = d
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	ref, _ := name.ParseReference(host + "/multi:1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	for arch, want := range digests {
		st := openStore(t)
		img, err := Pull(ctx, st, host+"/multi:1", WithPlatform("linux/"+arch))
		if err != nil {
			t.Fatal(err)
		}
		if img.Manifest.Digest != want {
			t.Errorf("%s: pulled %s, want %s", arch, img.Manifest.Digest, want)
		}
	}
	if _, err := Pull(ctx, openStore(t), host+"/multi:1", WithPlatform("linux/s390x")); err == nil {
		t.Error("pull of a missing platform succeeded")
	} else {
		t.Log(err)
	}
}
