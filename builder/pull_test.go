package builder

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/lbuild/lbuild/transfer"
)

// A FROM naming an image that is not in the store pulls it from its
// registry once; the next build finds it in the store and asks nothing.
func TestFromPullsOnce(t *testing.T) {
	var requests atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	src := openRoot(t)
	withBusybox(t, src)
	img, err := src.Store.Resolve("local/busybox")
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/base/busybox:1"
	if _, err := transfer.Push(context.Background(), src.Store, img, ref); err != nil {
		t.Fatal(err)
	}

	r := openRoot(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.txt": "a"})
	requests.Store(0)
	res, out := mustBuild(t, r, dir, "FROM "+ref+"\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt 2>/dev/null || true\n")
	if requests.Load() == 0 || !strings.Contains(out, "Pull complete") {
		t.Fatalf("first build did not pull (%d requests):\n%s", requests.Load(), out)
	}
	if res.Image.Config.RootFS.DiffIDs[0] != img.Config.RootFS.DiffIDs[0] {
		t.Error("the pulled base's layer must be the pushed one")
	}
	requests.Store(0)
	again, _ := mustBuild(t, r, dir, "")
	if n := requests.Load(); n != 0 {
		t.Errorf("second build sent %d registry requests, want 0", n)
	}
	if again.Image.ID != res.Image.ID {
		t.Error("second build must be all cached with the same ID")
	}
}
