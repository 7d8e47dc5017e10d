package erofs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbuild/lbuild/internal/erofs"
	"github.com/lbuild/lbuild/snapshot"
)

// randomEntries makes a short layer over a tiny namespace, so entries
// replace, link to, white out and nest in each other often.
func randomEntries(rng *rand.Rand) []entry {
	comp := func() string { return []string{"a", "b", "c"}[rng.IntN(3)] }
	pth := func() string {
		parts := make([]string, 1+rng.IntN(3))
		for i := range parts {
			parts[i] = comp()
		}
		return strings.Join(parts, "/")
	}
	var es []entry
	for range 1 + rng.IntN(12) {
		p := pth()
		if rng.IntN(4) > 0 {
			p = comp() + "/" + comp() + "/" + comp() // mostly deep, so files seldom block paths below them
		}
		var e entry
		switch rng.IntN(9) {
		case 0, 1:
			e = file(p, 0o644, []byte(p+fmt.Sprint(rng.IntN(100))))
		case 2, 3:
			e = dir(p+"/", int64(0o700+rng.IntN(0o77)))
			e.hdr.ModTime = time.Unix(int64(rng.IntN(1e9)), 0)
		case 4:
			e = special(tar.TypeSymlink, p, comp())
		case 5:
			target := pth()
			if len(es) > 0 && rng.IntN(4) > 0 {
				target = strings.TrimSuffix(es[rng.IntN(len(es))].hdr.Name, "/")
			}
			e = special(tar.TypeLink, p, target)
		case 6:
			e = file(filepath.Join(filepath.Dir(p), ".wh."+comp()), 0o644, nil)
		case 7:
			e = file(filepath.Join(filepath.Dir(p), ".wh..wh..opq"), 0o644, nil)
		case 8:
			e = withXattrs(dir(p+"/", 0o755), "user.k", fmt.Sprint(rng.IntN(3)), "trusted.t", p)
		}
		es = append(es, e)
	}
	return es
}

// TestRandomLayersMatchApplier: on random layers, Build either refuses with
// ErrUnsupported or agrees with the applier, failing where it fails and
// otherwise mounting the same tree.
func TestRandomLayersMatchApplier(t *testing.T) {
	needErofs(t)
	since := time.Now().Add(-time.Second)
	compared, unsupported, unpackable, bothFail := 0, 0, 0, 0
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 42))
		es := randomEntries(rng)
		tmp := t.TempDir()
		tarPath := filepath.Join(tmp, "layer.tar")
		writeTar(t, tarPath, es)
		b, err := os.ReadFile(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range es {
			names = append(names, fmt.Sprintf("%c:%s>%s", e.hdr.Typeflag, e.hdr.Name, e.hdr.Linkname))
		}
		buildErr := erofs.Build(new(bytes.Buffer), bytes.NewReader(b))
		sum := sha256.Sum256(b)
		name := snapshot.ChainID("", "sha256:"+hex.EncodeToString(sum[:]))
		s, err := snapshot.New(filepath.Join(tmp, "snap"), snapshot.DriverCopy)
		if err != nil {
			t.Fatal(err)
		}
		applyErr := s.Apply(context.Background(), name, "", bytes.NewReader(b))
		if errors.Is(buildErr, errors.ErrUnsupported) {
			unsupported++
			if applyErr == nil {
				unpackable++ // a path through a symlink, which os.Root follows
			}
			continue
		}
		switch {
		case applyErr != nil && buildErr != nil:
			bothFail++
			continue
		case applyErr != nil || buildErr != nil:
			t.Errorf("seed %d %v: applier: %v, Build: %v", seed, names, applyErr, buildErr)
			continue
		}
		dirs, err := s.LowerDirs(name)
		if err != nil {
			t.Fatal(err)
		}
		want := snapshotTree(t, dirs[0], since)
		got := snapshotTree(t, mounted(t, tarPath, bytes.NewReader(b)), since)
		if !mapsEqual(want, got) {
			t.Errorf("seed %d %v:", seed, names)
			compareTrees(t, want, got)
		}
		compared++
	}
	t.Logf("%d layers compared, %d refused as unsupported (%d of them the applier unpacks), %d refused by both",
		compared, unsupported, unpackable, bothFail)
	if compared < 100 {
		t.Errorf("only %d of 300 random layers were compared", compared)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
