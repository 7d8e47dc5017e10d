package remotecache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/store"
)

// fakeBuild stores n random layers of size bytes in st and returns the
// records of a build that made them (a layer step each, then a metadata
// step).
func fakeBuild(t *testing.T, st *store.Store, n, size int, tag string) Build {
	t.Helper()
	var b Build
	for i := 0; i < n; i++ {
		data := make([]byte, size)
		rand.Read(data)
		h, sz, err := st.PutBlob(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		b.Records = append(b.Records, &cache.Record{
			Key: cache.NewKey("", tag, fmt.Sprint(i)), DiffID: h.String(), Size: sz,
			Created: time.Unix(1700000000, 0).UTC(), CreatedBy: fmt.Sprintf("COPY %s-%d", tag, i),
		})
	}
	b.Records = append(b.Records, &cache.Record{Key: cache.NewKey("", tag, "env"), Created: time.Unix(1700000000, 0).UTC(), CreatedBy: "ENV A=1", EmptyLayer: true})
	return b
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "oci"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func noWarn(t *testing.T) func(string) {
	return func(s string) { t.Errorf("unexpected warning: %s", s) }
}

// dirSize is the bytes of the files under dir.
func dirSize(t *testing.T, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// TestExportImportLocal: an exported dir, moved elsewhere, serves every
// record; a hit's layer reaches a fresh store by a verified hard link.
func TestExportImportLocal(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	b := fakeBuild(t, st, 3, 4096, "a")
	dir := filepath.Join(t.TempDir(), "c")
	stats, err := Export(ctx, st, nil, b, Spec{Type: "local", Dir: dir}, noWarn(t))
	if err != nil {
		t.Fatal(err)
	}
	if stats.Entries != 4 || stats.Uploaded != 3 {
		t.Errorf("stats %+v, want 4 entries and 3 new blobs", stats)
	}
	// A CI cache step saving the dir as another user can read every file.
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().Perm()&0o004 == 0 {
			t.Errorf("%s is not world-readable (%v)", p, fi.Mode())
		}
		return nil
	})
	moved := filepath.Join(t.TempDir(), "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	src := Import(ctx, []Spec{{Type: "local", Dir: moved}}, noWarn(t))
	fresh := openStore(t)
	for _, rec := range b.Records {
		got := src.Record(rec.Key)
		if got == nil || got.DiffID != rec.DiffID || !got.Created.Equal(rec.Created) || got.CreatedBy != rec.CreatedBy {
			t.Fatalf("record %s: got %+v, want %+v", rec.Key, got, rec)
		}
		if rec.DiffID == "" {
			continue
		}
		h, _ := v1.NewHash(rec.DiffID)
		if !src.HasLayer(h) || fresh.HasBlob(h) {
			t.Fatalf("layer %s: HasLayer %v, in fresh store before fetch %v", h, src.HasLayer(h), fresh.HasBlob(h))
		}
		if err := src.FetchLayer(ctx, fresh, h); err != nil {
			t.Fatal(err)
		}
		if !fresh.HasBlob(h) {
			t.Fatalf("layer %s not in the store after FetchLayer", h)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(moved, "index.json")); strings.Contains(string(b), dir) {
		t.Errorf("index.json names the old absolute path: %s", b)
	}
}

// TestCorruptCacheIsAMiss: garbage index.json, a truncated layer blob and
// a blob with flipped bytes are each reported in one line and never used.
func TestCorruptCacheIsAMiss(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	b := fakeBuild(t, st, 2, 4096, "a")
	dir := t.TempDir()
	if _, err := Export(ctx, st, nil, b, Spec{Type: "local", Dir: dir}, noWarn(t)); err != nil {
		t.Fatal(err)
	}
	h0, _ := v1.NewHash(b.Records[0].DiffID)
	h1, _ := v1.NewHash(b.Records[1].DiffID)
	// Truncate layer 0 (a copy: the store's blob is the same inode).
	p0 := blobPath(dir, h0)
	data, _ := os.ReadFile(p0)
	os.Remove(p0)
	os.WriteFile(p0, data[:100], 0o444)
	// Flip a byte of layer 1.
	p1 := blobPath(dir, h1)
	data, _ = os.ReadFile(p1)
	data[10] ^= 0xff
	os.Remove(p1)
	os.WriteFile(p1, data, 0o444)

	var warns []string
	src := Import(ctx, []Spec{{Type: "local", Dir: dir}}, func(s string) { warns = append(warns, s) })
	if len(warns) != 1 || !strings.Contains(warns[0], "missing or truncated") || strings.Contains(warns[0], "\n") {
		t.Errorf("warnings %q, want one line about a truncated blob", warns)
	}
	if src.Record(b.Records[0].Key) != nil {
		t.Error("the record of a truncated layer is served")
	}
	fresh := openStore(t)
	if err := src.FetchLayer(ctx, fresh, h1); !errors.Is(err, ErrCorrupt) || fresh.HasBlob(h1) {
		t.Errorf("fetch of a corrupted blob: %v, stored %v; want ErrCorrupt and nothing stored", err, fresh.HasBlob(h1))
	}

	// The next export drops the truncated entry instead of carrying it on.
	warns = nil
	if _, err := Export(ctx, st, nil, fakeBuild(t, st, 1, 10, "next"), Spec{Type: "local", Dir: dir}, func(s string) { warns = append(warns, s) }); err != nil {
		t.Fatal(err)
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "dropping 1 entries") {
		t.Errorf("export over a truncated blob: warnings %q", warns)
	}
	Import(ctx, []Spec{{Type: "local", Dir: dir}}, noWarn(t))

	os.WriteFile(filepath.Join(dir, "index.json"), []byte("{garbage"), 0o644)
	warns = nil
	src = Import(ctx, []Spec{{Type: "local", Dir: dir}}, func(s string) { warns = append(warns, s) })
	if len(warns) != 1 || !strings.Contains(warns[0], "corrupt cache") || src.Len() != 0 {
		t.Errorf("garbage index.json: warnings %q, %d entries", warns, src.Len())
	}
	warns = nil
	Import(ctx, []Spec{{Type: "local", Dir: filepath.Join(dir, "nothing")}}, func(s string) { warns = append(warns, s) })
	if len(warns) != 1 || !strings.Contains(warns[0], "no cache there yet") {
		t.Errorf("missing dir: warnings %q", warns)
	}
}

// TestFailedExportKeepsPreviousCache: an export that fails midway (after
// writing layer blobs) leaves the previous cache whole and readable.
func TestFailedExportKeepsPreviousCache(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	dir := t.TempDir()
	first := fakeBuild(t, st, 2, 4096, "first")
	if _, err := Export(ctx, st, nil, first, Spec{Type: "local", Dir: dir}, noWarn(t)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	second := fakeBuild(t, st, 2, 4096, "second")
	second.Mounts = map[string]string{"gone": filepath.Join(t.TempDir(), "no-such-mount")}
	if _, err := Export(ctx, st, nil, second, Spec{Type: "local", Dir: dir, Mounts: true}, noWarn(t)); err == nil {
		t.Fatal("export with an unreadable cache mount succeeded")
	}
	after, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	if !bytes.Equal(before, after) {
		t.Error("a failed export changed index.json")
	}
	src := Import(ctx, []Spec{{Type: "local", Dir: dir}}, noWarn(t))
	fresh := openStore(t)
	for _, rec := range first.Records {
		if src.Record(rec.Key) == nil {
			t.Fatalf("previous record %s lost", rec.Key)
		}
		if h, err := v1.NewHash(rec.DiffID); err == nil {
			if err := src.FetchLayer(ctx, fresh, h); err != nil {
				t.Fatalf("previous layer unreadable: %v", err)
			}
		}
	}
}

// TestConcurrentExportsToOneDir: two exports at once both succeed and
// leave a cache holding a complete build.
func TestConcurrentExportsToOneDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	builds := make([]Build, 2)
	stores := make([]*store.Store, 2)
	for i := range builds {
		stores[i] = openStore(t)
		builds[i] = fakeBuild(t, stores[i], 3, 64<<10, fmt.Sprint("b", i))
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = Export(ctx, stores[i], nil, builds[i], Spec{Type: "local", Dir: dir}, func(string) {})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	src := Import(ctx, []Spec{{Type: "local", Dir: dir}}, noWarn(t))
	fresh := openStore(t)
	for _, b := range builds {
		for _, rec := range b.Records {
			if src.Record(rec.Key) == nil {
				t.Fatalf("record %s missing", rec.Key)
			}
			if h, err := v1.NewHash(rec.DiffID); err == nil {
				if err := src.FetchLayer(ctx, fresh, h); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestMaxSizeDropsLeastRecentlyUsed: over repeated exports of new content
// the dir stays under max-size, keeps the newest build whole and drops the
// oldest first.
func TestMaxSizeDropsLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	dir := t.TempDir()
	const max = 1 << 20
	var builds []Build
	for i := 0; i < 8; i++ {
		b := fakeBuild(t, st, 2, 150<<10, fmt.Sprint("gen", i))
		builds = append(builds, b)
		if _, err := Export(ctx, st, nil, b, Spec{Type: "local", Dir: dir, MaxSize: max}, noWarn(t)); err != nil {
			t.Fatal(err)
		}
		if n := dirSize(t, dir); n > max {
			t.Fatalf("after build %d the dir holds %d bytes, more than max-size %d", i, n, max)
		}
	}
	src := Import(ctx, []Spec{{Type: "local", Dir: dir}}, noWarn(t))
	for _, rec := range builds[len(builds)-1].Records {
		if src.Record(rec.Key) == nil {
			t.Fatalf("newest build's record %s dropped", rec.Key)
		}
	}
	if src.Record(builds[0].Records[0].Key) != nil {
		t.Error("oldest build still cached: nothing was dropped")
	}
}

// TestMountRoundTrip: a cache mount's files, modes and symlinks come back.
func TestMountRoundTrip(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	mdir := t.TempDir()
	os.MkdirAll(filepath.Join(mdir, "pkgs", "sub"), 0o750)
	os.WriteFile(filepath.Join(mdir, "pkgs", "sub", "a.deb"), []byte("package"), 0o640)
	os.Symlink("sub/a.deb", filepath.Join(mdir, "pkgs", "link"))
	b := fakeBuild(t, st, 1, 10, "m")
	b.Mounts = map[string]string{"apt": mdir}
	dir := t.TempDir()
	if _, err := Export(ctx, st, nil, b, Spec{Type: "local", Dir: dir, Mounts: true}, noWarn(t)); err != nil {
		t.Fatal(err)
	}
	src := Import(ctx, []Spec{{Type: "local", Dir: dir}}, noWarn(t))
	out := t.TempDir()
	if err := src.SeedMount(ctx, "apt", out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, "pkgs", "link"))
	if err != nil || string(got) != "package" {
		t.Fatalf("seeded mount: %q, %v", got, err)
	}
	if fi, _ := os.Stat(filepath.Join(out, "pkgs", "sub", "a.deb")); fi == nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode not kept: %v", fi)
	}
	other := t.TempDir()
	if err := src.SeedMount(ctx, "unknown", other); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(other); len(ents) != 0 {
		t.Error("an unknown mount id was filled")
	}
}

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		to   bool
		want Spec
		err  string
	}{
		{"type=local,src=/c", false, Spec{Type: "local", Dir: "/c"}, ""},
		{"type=local,dest=c,max-size=1GB,mounts=true,mode=max", true, Spec{Type: "local", Dir: "c", MaxSize: 1 << 30, Mounts: true}, ""},
		{"type=registry,ref=h:5000/r:t", true, Spec{Type: "registry", Ref: "h:5000/r:t"}, ""},
		{"h:5000/r:t", false, Spec{Type: "registry", Ref: "h:5000/r:t"}, ""},
		{"type=local,dest=c", false, Spec{}, "unknown field"},
		{"type=local", true, Spec{}, "needs dest=DIR"},
		{"type=s3,ref=x", true, Spec{}, "unknown type"},
		{"type=local,dest=c,max-size=lots", true, Spec{}, "not a size"},
	} {
		got, err := ParseSpec(tc.in, tc.to)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}
