package builder

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/lbuild/lbuild/parser"
)

// resolveInRoot follows symlinks inside root and sees root as the context
// BuildKit would have been sent: what .dockerignore excludes does not exist,
// however a path gets there, but for files a "!" exception keeps.
func TestResolveInRoot(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"public.txt": "p", "secret.txt": "s", "private/key.pem": "k", "private/ok.txt": "ok", "d/f": "f",
	})
	for link, target := range map[string]string{
		"link": "secret.txt", "dirlink": "private", "abs": "/d/f", "up": "../../../d", "loop": "loop",
		"chain": "link", "d/back": "../secret.txt", "d/self": ".", "good": "public.txt",
	} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	ig, err := parser.NewIgnore([]string{"secret.txt", "private", "!private/ok.txt"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rel, want string
		err       error
	}{
		{"good", "public.txt", nil},
		{"abs", "d/f", nil},                       // an absolute link resolves inside root
		{"up/f", "d/f", nil},                      // so does one climbing out
		{"d/self/self/f", "d/f", nil},             // a link to "." is no loop
		{"dirlink/ok.txt", "private/ok.txt", nil}, // kept by "!": sent with its parent
		{".", "", nil},
		{"link", "", fs.ErrNotExist},
		{"chain", "", fs.ErrNotExist},
		{"d/back", "", fs.ErrNotExist},
		{"dirlink", "private", nil}, // an excluded dir "!" may keep files in (its walk sees only those)
		{"dirlink/key.pem", "", fs.ErrNotExist},
		{"private/key.pem", "", fs.ErrNotExist},
		{"nope", "", fs.ErrNotExist},
		{"public.txt/x", "", syscall.ENOTDIR},
		{"loop", "", syscall.ELOOP},
	} {
		got, err := resolveInRoot(root, tc.rel, ig)
		if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("resolveInRoot(%q) = %q, %v; want %q, %v", tc.rel, got, err, tc.want, tc.err)
		}
	}
	// Without an ignore file every path is there.
	if got, err := resolveInRoot(root, "chain", nil); got != "secret.txt" || err != nil {
		t.Errorf("resolveInRoot(chain) without .dockerignore = %q, %v", got, err)
	}
}
