package transfer

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/lbuild/lbuild/store"
)

// countOpens counts, per digest, the store blobs this package opens while
// the test runs.
func countOpens(t *testing.T) func(v1.Hash) int {
	t.Helper()
	var mu sync.Mutex
	n := map[v1.Hash]int{}
	openHook = func(h v1.Hash) {
		mu.Lock()
		n[h]++
		mu.Unlock()
	}
	t.Cleanup(func() { openHook = nil })
	return func(h v1.Hash) int {
		mu.Lock()
		defer mu.Unlock()
		return n[h]
	}
}

// streamedPatch reports whether r uploads a blob of unknown size (remote's
// streamed PATCH, which only a layer compressed on the way out gets).
func streamedPatch(r *http.Request) bool {
	return r.Method == http.MethodPatch && strings.Contains(r.URL.Path, "/blobs/uploads/") && r.ContentLength < 0
}

// layerPatch reports whether r uploads the test layer: streamed, or, on a
// retry after a pass has completed, of known size (bigger than the config).
func layerPatch(r *http.Request) bool {
	return r.Method == http.MethodPatch && strings.Contains(r.URL.Path, "/blobs/uploads/") && (r.ContentLength < 0 || r.ContentLength > 64<<10)
}

// ingestSize is the size of the largest temp blob being written in st.
func ingestSize(st *store.Store) int64 {
	ents, _ := os.ReadDir(filepath.Join(st.Dir(), ".ingest"))
	var max int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Size() > max {
			max = fi.Size()
		}
	}
	return max
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// nFiles counts the entries of dir (0 if it cannot be read), for handlers,
// which must not call t.Fatal.
func nFiles(dir string) int {
	ents, _ := os.ReadDir(dir)
	return len(ents)
}

// The first push of a new layer compresses it once, uploading the
// compressed bytes while they are produced; the store keeps the compressed
// blob and the mapping afterwards, and a second push moves nothing.
func TestPushStreamsCompression(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	// Incompressible, so the compressed stream is as big as the layer: far
	// more than the socket buffers can hold while the registry has not read
	// any of it.
	const size = 12 << 20
	data := layerTar(t, map[string][]byte{"big": randomBytes(t, size)})
	img := makeImage(t, st, "s:1", data)
	diffID := img.Layers[0].Digest

	type atPatch struct {
		blobs, mappings int
		ingest          int64
	}
	var (
		mu      sync.Mutex
		patches []atPatch
	)
	blobsBefore := blobCount(t, st)
	cnt := newCounter()
	host := testRegistry(t, cnt, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if streamedPatch(r) {
				// The request has arrived; the registry has read none of
				// its body yet.
				s := atPatch{nFiles(filepath.Join(st.Dir(), "blobs", "sha256")), nFiles(filepath.Join(st.Dir(), ".compressed")), ingestSize(st)}
				mu.Lock()
				patches = append(patches, s)
				mu.Unlock()
			}
			h.ServeHTTP(w, r)
		})
	})
	opens := countOpens(t)
	runs := compressRuns.Load()
	var out strings.Builder
	ref := host + "/stream:1"
	dgst, err := Push(ctx, st, img, ref, WithProgress(&out))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("push:\n%s", out.String())

	if got := compressRuns.Load() - runs; got != 1 {
		t.Errorf("compression passes: %d, want 1", got)
	}
	if got := opens(diffID); got != 1 {
		t.Errorf("uncompressed layer opened %d times, want 1", got)
	}
	if len(patches) != 1 {
		t.Fatalf("%d streamed PATCH requests, want 1", len(patches))
	}
	p := patches[0]
	if p.blobs != blobsBefore || p.mappings != 0 {
		t.Errorf("when the upload began: %d blobs (before the push: %d), %d mappings: compression was already finished", p.blobs, blobsBefore, p.mappings)
	}
	if p.ingest >= size {
		t.Errorf("when the upload began, %d compressed bytes were written already (layer %d): not streamed", p.ingest, size)
	}
	t.Logf("compressed bytes written when the PATCH arrived: %d of ~%d", p.ingest, size)
	if got := cnt.get("commit"); got != 2 {
		t.Errorf("%d blob uploads, want 2 (layer + config)", got)
	}
	if got := cnt.get("head"); got != 1 {
		t.Errorf("%d HEAD requests, want 1 (the config; a streamed layer has no digest to ask about)", got)
	}
	if n := strings.Count(out.String(), ": Pushed"); n != 1 {
		t.Errorf("%d Pushed lines, want 1", n)
	}

	// The compressed blob and the mapping are there, and they are what the
	// registry serves.
	d, ok := cachedCompressed(st, img.Layers[0], Compression{Algorithm: Gzip})
	if !ok {
		t.Fatal("no remembered compressed blob after the push")
	}
	if got := opens(d.Digest); got != 0 {
		t.Errorf("compressed blob opened %d times during the first push, want 0", got)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	rimg, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(rimg); err != nil {
		t.Errorf("pushed image does not validate: %v", err)
	}
	if rd, _ := rimg.Digest(); rd != dgst {
		t.Errorf("registry serves %s, push said %s", rd, dgst)
	}
	ls, err := rimg.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if ld, _ := ls[0].Digest(); ld != d.Digest {
		t.Errorf("registry layer %s, remembered %s", ld, d.Digest)
	}
	st2 := openStore(t)
	pulled, err := Pull(ctx, st2, ref)
	if err != nil {
		t.Fatal(err)
	}
	if pulled.ID != img.ID {
		t.Errorf("pulled image ID %s, pushed %s", pulled.ID, img.ID)
	}

	// A second push uploads nothing, compresses nothing and does not open the
	// uncompressed layer again.
	checkRepushIdle(t, ctx, st, img, ref, cnt, dgst, 1)
	if got := opens(diffID); got != 1 {
		t.Errorf("second push opened the uncompressed layer (%d opens in all)", got)
	}
	// Save uses the remembered blob too.
	runs = compressRuns.Load()
	if _, err := Prepare(ctx, st, img, Compression{Algorithm: Gzip}, 1, nil); err != nil || compressRuns.Load() != runs {
		t.Errorf("Prepare after push: %v, %d compressions", err, compressRuns.Load()-runs)
	}
}

// New layers are compressed and uploaded in parallel: both streamed PATCHes
// are in flight at once. A layer that occurs twice is compressed and sent
// once.
func TestPushStreamsInParallel(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	a := layerTar(t, map[string][]byte{"a": randomBytes(t, 2<<20)})
	b := layerTar(t, map[string][]byte{"b": randomBytes(t, 2<<20)})
	img := makeImage(t, st, "p:1", a, b, a)
	arrived := make(chan struct{}, 2)
	both := make(chan struct{})
	var once sync.Once
	var timedOut atomic.Bool
	cnt := newCounter()
	host := testRegistry(t, cnt, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if streamedPatch(r) {
				arrived <- struct{}{}
				if len(arrived) == 2 {
					once.Do(func() { close(both) })
				}
				select {
				case <-both:
				case <-time.After(5 * time.Second):
					timedOut.Store(true)
				}
			}
			h.ServeHTTP(w, r)
		})
	})
	runs := compressRuns.Load()
	var out strings.Builder
	if _, err := Push(ctx, st, img, host+"/par:1", WithProgress(&out), WithJobs(3)); err != nil {
		t.Fatal(err)
	}
	if timedOut.Load() {
		t.Error("the two new layers were not uploaded at the same time")
	}
	if got := compressRuns.Load() - runs; got != 2 {
		t.Errorf("%d compression passes, want 2", got)
	}
	if got := cnt.get("commit"); got != 3 {
		t.Errorf("%d blob uploads, want 3 (2 layers + config)", got)
	}
	if n := strings.Count(out.String(), ": Pushed"); n != 2 {
		t.Errorf("%d Pushed lines, want 2:\n%s", n, out.String())
	}
	if _, err := Pull(ctx, openStore(t), host+"/par:1"); err != nil {
		t.Fatal(err)
	}
}

// An upload that fails (after retries) or is cancelled keeps neither a
// compressed blob nor a mapping nor a temp file; the next push works.
func TestPushStreamFailureKeepsNothing(t *testing.T) {
	fast := withRemoteOptions(remote.WithRetryBackoff(remote.Backoff{Duration: time.Millisecond, Factor: 1, Steps: 3}))
	for _, tc := range []string{"patch", "put", "cancel"} {
		t.Run(tc, func(t *testing.T) {
			st := openStore(t)
			img := makeImage(t, st, "f:1", layerTar(t, map[string][]byte{"f": randomBytes(t, 3<<20)}))
			cfgDigest := configDigest(t, st, img)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var fail atomic.Bool
			fail.Store(true)
			var failed atomic.Int64
			cnt := newCounter()
			host := testRegistry(t, cnt, func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if fail.Load() {
						switch {
						case tc == "patch" && layerPatch(r):
							failed.Add(1)
							// Take part of the body, then fail.
							buf := make([]byte, 64<<10)
							r.Body.Read(buf)
							http.Error(w, "boom", http.StatusInternalServerError)
							return
						case tc == "put" && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") && r.URL.Query().Get("digest") != cfgDigest.String():
							failed.Add(1)
							http.Error(w, "boom", http.StatusInternalServerError)
							return
						case tc == "cancel" && streamedPatch(r):
							failed.Add(1)
							buf := make([]byte, 64<<10)
							r.Body.Read(buf)
							cancel()
							// The client drops the connection.
							io.Copy(io.Discard, r.Body)
							return
						}
					}
					h.ServeHTTP(w, r)
				})
			})
			blobs := blobCount(t, st)
			_, err := Push(ctx, st, img, host+"/fail:1", fast)
			if err == nil {
				t.Fatal("push succeeded")
			}
			t.Logf("push error: %v (%d failed requests)", err, failed.Load())
			if tc == "cancel" && !errors.Is(err, context.Canceled) {
				t.Errorf("error %v, want context.Canceled", err)
			}
			if failed.Load() == 0 {
				t.Fatal("the failure was never injected")
			}
			if got := blobCount(t, st); got != blobs {
				t.Errorf("%d blobs after the failed push, %d before", got, blobs)
			}
			if n := countFiles(t, filepath.Join(st.Dir(), ".compressed")); n != 0 {
				t.Errorf("%d mappings after the failed push", n)
			}
			if n := countFiles(t, filepath.Join(st.Dir(), ".ingest")); n != 0 {
				t.Errorf("%d temp blobs left after the failed push", n)
			}

			fail.Store(false)
			runs := compressRuns.Load()
			if _, err := Push(context.Background(), st, img, host+"/fail:1"); err != nil {
				t.Fatal(err)
			}
			if got := compressRuns.Load() - runs; got != 1 {
				t.Errorf("push after the failure compressed %d times, want 1", got)
			}
			if _, ok := cachedCompressed(st, img.Layers[0], Compression{Algorithm: Gzip}); !ok {
				t.Error("no mapping after the successful push")
			}
			if _, err := Pull(context.Background(), openStore(t), host+"/fail:1"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A layer whose store blob does not hash to its DiffID is not uploaded
// (no PUT for it) and not stored; the error says why.
func TestPushStreamCorruptLayer(t *testing.T) {
	st := openStore(t)
	img := makeImage(t, st, "c:1", layerTar(t, map[string][]byte{"c": randomBytes(t, 256<<10)}))
	p := st.BlobPath(img.Layers[0].Digest)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
	cnt := newCounter()
	host := testRegistry(t, cnt, nil)
	blobs := blobCount(t, st)
	_, err = Push(context.Background(), st, img, host+"/corrupt:1")
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("push error %v, want ErrDigestMismatch", err)
	}
	if got := cnt.get("commit"); got > 1 {
		t.Errorf("%d blob uploads committed, want at most the config", got)
	}
	if got := blobCount(t, st); got != blobs {
		t.Errorf("%d blobs after the failed push, %d before", got, blobs)
	}
	if n := countFiles(t, filepath.Join(st.Dir(), ".compressed")); n != 0 {
		t.Errorf("%d mappings after the failed push", n)
	}
}

func configDigest(t *testing.T, st *store.Store, img *store.Image) v1.Hash {
	t.Helper()
	mb, err := rawManifest(st, img)
	if err != nil {
		t.Fatal(err)
	}
	m, err := v1.ParseManifest(strings.NewReader(string(mb)))
	if err != nil {
		t.Fatal(err)
	}
	return m.Config.Digest
}
