package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lbuild/lbuild/store"
)

// cutBlobs sits in front of the registry and, while *left > 0, answers each
// GET of a blob of at least *min bytes with its headers and half its body,
// then resets the connection (SO_LINGER 0: the client reads ECONNRESET),
// counting *left down.
func cutBlobs(left, min *atomic.Int64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/sha256:") || left.Add(-1) < 0 {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if int64(rec.Body.Len()) < min.Load() {
				left.Add(1)
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
				return
			}
			conn, bw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				panic(err)
			}
			body := rec.Body.Bytes()
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", len(body))
			bw.Write(body[:len(body)/2])
			bw.Flush()
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		})
	}
}

// TestPullRetriesResetConnections: a pull whose blob downloads are cut off
// by connection resets tries them again (as push does) and succeeds; one
// that is cut off more often than it tries fails in one line and tags
// nothing.
func TestPullRetriesResetConnections(t *testing.T) {
	ctx := context.Background()
	var left, min atomic.Int64
	host := testRegistry(t, newCounter(), cutBlobs(&left, &min))
	st := openStore(t)
	img := makeImage(t, st, "flaky:1",
		layerTar(t, map[string][]byte{"big": randomBytes(t, 1<<20)}),
		layerTar(t, map[string][]byte{"small": []byte("small\n")}))
	ref := host + "/flaky:1"
	dgst, err := Push(ctx, st, img, ref)
	if err != nil {
		t.Fatal(err)
	}
	fast := withRetryBackoff(remote.Backoff{Duration: time.Millisecond, Factor: 1, Steps: 3})

	for _, tc := range []struct {
		what   string
		resets int64
		min    int64 // size of the blobs to cut
	}{
		{"the config's first GET", 1, 0},
		{"the big layer's first two GETs", 2, 64 << 10},
	} {
		left.Store(tc.resets)
		min.Store(tc.min)
		st2 := openStore(t)
		var out bytes.Buffer
		pulled, err := Pull(ctx, st2, ref, fast, WithProgress(&out))
		if err != nil {
			t.Fatalf("pull with %s reset: %v\n%s", tc.what, err, out.String())
		}
		if pulled.Manifest.Digest != dgst || pulled.ID != img.ID {
			t.Errorf("pulled %s/%s, pushed %s/%s", pulled.Manifest.Digest, pulled.ID, dgst, img.ID)
		}
		if n := strings.Count(out.String(), ": Retrying in "); int64(n) != tc.resets {
			t.Errorf("%s reset: %d 'Retrying' lines, want %d:\n%s", tc.what, n, tc.resets, out.String())
		}
		if left.Load() > 0 {
			t.Errorf("%s: %d resets not used", tc.what, left.Load())
		}
		t.Logf("%s reset:\n%s", tc.what, out.String())
	}

	// More resets than tries: one clear line, nothing tagged.
	left.Store(1000)
	min.Store(0)
	st3 := openStore(t)
	_, err = Pull(ctx, st3, ref, fast)
	if err == nil {
		t.Fatal("pull succeeded with every blob GET reset")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "pull "+ref+": ") || strings.Contains(msg, "\n") {
		t.Errorf("unclear error %q", msg)
	}
	t.Log(err)
	if _, err := st3.Resolve(ref); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("image tagged after a failed pull: %v", err)
	}
	left.Store(0)
}
