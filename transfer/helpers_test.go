package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/store"
)

// layerTar builds an uncompressed layer holding files (name -> content).
func layerTar(t testing.TB, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b := files[n]
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1, 0), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// makeImage stores the layers uncompressed, as the builder does, and tags
// the image ref.
func makeImage(t testing.TB, st *store.Store, ref string, layers ...[]byte) *store.Image {
	t.Helper()
	cfg := &v1.ConfigFile{
		Architecture: "amd64", OS: "linux",
		Created: v1.Time{Time: time.Unix(1700000000, 0).UTC()},
		RootFS:  v1.RootFS{Type: "layers"},
		Config:  v1.Config{Cmd: []string{"/bin/sh"}},
	}
	var descs []v1.Descriptor
	for _, l := range layers {
		h, n, err := st.PutBlob(bytes.NewReader(l))
		if err != nil {
			t.Fatal(err)
		}
		descs = append(descs, v1.Descriptor{MediaType: types.OCIUncompressedLayer, Digest: h, Size: n})
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, h)
		cfg.History = append(cfg.History, v1.History{CreatedBy: "test"})
	}
	img, err := st.WriteImage(cfg, descs)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ref, img); err != nil {
		t.Fatal(err)
	}
	img, err = st.Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// counter counts registry requests by kind.
type counter struct {
	mu sync.Mutex
	n  map[string]int
	// blob GETs by digest
	gets map[string]int
}

func newCounter() *counter { return &counter{n: map[string]int{}, gets: map[string]int{}} }

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		h.ServeHTTP(w, r)
	})
}

func (c *counter) record(r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := r.URL.Path
	switch {
	case strings.Contains(p, "/blobs/uploads/") && r.Method == http.MethodPost:
		if r.URL.Query().Get("mount") != "" && r.URL.Query().Get("from") != "" {
			c.n["mount"]++
		}
		c.n["upload"]++ // upload sessions started (POST)
	case strings.Contains(p, "/blobs/uploads/") && r.Method == http.MethodPut:
		c.n["commit"]++ // blob uploads completed (PUT ?digest=)
	case strings.Contains(p, "/blobs/sha256:") && r.Method == http.MethodGet:
		c.n["get"]++
		c.gets[p[strings.LastIndex(p, "/")+1:]]++
	case strings.Contains(p, "/blobs/sha256:") && r.Method == http.MethodHead:
		c.n["head"]++
	case strings.Contains(p, "/manifests/") && r.Method == http.MethodPut:
		c.n["manifest-put"]++
	}
}

func (c *counter) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// blobGets returns how often blob digest was fetched.
func (c *counter) blobGets(digest string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[digest]
}

func (c *counter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n = map[string]int{}
	c.gets = map[string]int{}
}

// testRegistry starts go-containerregistry's in-process registry and returns
// its host:port.
func testRegistry(t testing.TB, c *counter, mw func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(nopLogger()))
	if mw != nil {
		h = mw(h)
	}
	h = c.wrap(h)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u.Host
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// checkRepushIdle pushes img to ref again and checks that it sends and
// compresses nothing: the same digest, no upload started, and one
// "Layer already exists" line per layer.
func checkRepushIdle(t *testing.T, ctx context.Context, st *store.Store, img *store.Image, ref string, cnt *counter, dgst v1.Hash, layers int) {
	t.Helper()
	cnt.reset()
	var out bytes.Buffer
	runs := compressRuns.Load()
	again, err := Push(ctx, st, img, ref, WithProgress(&out))
	if err != nil {
		t.Fatal(err)
	}
	if again != dgst {
		t.Errorf("second push digest %s, first %s", again, dgst)
	}
	if got := compressRuns.Load() - runs; got != 0 {
		t.Errorf("second push compressed %d times, want 0", got)
	}
	if got := cnt.get("upload"); got != 0 {
		t.Errorf("second push started %d uploads, want 0", got)
	}
	if n := strings.Count(out.String(), ": Layer already exists"); n != layers {
		t.Errorf("second push: %d 'Layer already exists' lines, want %d:\n%s", n, layers, out.String())
	}
}
