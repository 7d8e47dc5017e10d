package main

import (
	"bytes"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/lbuild/lbuild/builder/buildertest"
)

// runEnv is run with extra environment variables.
func runEnv(t *testing.T, env []string, root string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lbuildBin, append([]string{"--root", root}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

const cliReproDockerfile = `FROM local/busybox AS build
WORKDIR /work/deep
COPY src/ /opt/app/src/
RUN mkdir -p out/sub && echo hi > out/sub/f && ln -s sub/f out/link && touch out/empty
FROM local/busybox
ENV APP=/opt/app
COPY --from=build /work/deep/out /opt/app/out/
COPY cfg.txt /etc/app/nested/cfg.txt
WORKDIR /srv/www
RUN echo done > marker
`

// reproRoot makes a store root holding local/busybox.
func reproRoot(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	base := t.TempDir()
	if err := buildertest.BusyboxContext(base); err != nil {
		t.Skip(err)
	}
	root := t.TempDir()
	if _, stderr, code := run(t, root, "build", "-t", "local/busybox", base); code != 0 {
		t.Fatal(stderr)
	}
	return root
}

// TestCLISourceDateEpochAndPush: --source-date-epoch N and
// SOURCE_DATE_EPOCH=N give the same image from two copies of a context in
// two roots, and pushing it from both gives the same manifest digest with
// gzip and with zstd (compressed layers are the same bytes).
func TestCLISourceDateEpochAndPush(t *testing.T) {
	roots := []string{reproRoot(t), reproRoot(t)}
	files := map[string]string{"src/main.txt": "main\n", "src/lib/util.sh": "echo util\n", "cfg.txt": "k=v\n"}
	ctxA := ctxDir(t, cliReproDockerfile, files)
	time.Sleep(1100 * time.Millisecond) // the second copy is written, and built, at another second
	ctxB := ctxDir(t, cliReproDockerfile, files)

	idA, stderr, code := run(t, roots[0], "build", "-q", "--source-date-epoch", "1700000000", "-t", "app:1", ctxA)
	if code != 0 {
		t.Fatalf("build --source-date-epoch: exit %d: %s", code, stderr)
	}
	idB, stderr, code := runEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, roots[1], "build", "-q", "-t", "app:1", ctxB)
	if code != 0 {
		t.Fatalf("SOURCE_DATE_EPOCH build: exit %d: %s", code, stderr)
	}
	if strings.TrimSpace(idA) == "" || idA != idB {
		t.Fatalf("--source-date-epoch gave %q, SOURCE_DATE_EPOCH %q", idA, idB)
	}
	// The flag wins over the variable.
	idC, stderr, code := runEnv(t, []string{"SOURCE_DATE_EPOCH=5"}, roots[1], "build", "-q", "--source-date-epoch", "1700000000", ctxB)
	if code != 0 || idC != idA {
		t.Errorf("flag over variable: %q (exit %d: %s), want %q", idC, code, stderr, idA)
	}

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	for _, comp := range []string{"gzip", "zstd"} {
		var digests []string
		for i, root := range roots {
			if i > 0 {
				time.Sleep(1100 * time.Millisecond) // a time stamp in a compressed header would differ
			}
			ref := u.Host + "/repro/" + string(rune('a'+i)) + ":" + comp
			if _, stderr, code := run(t, root, "push", "--compression", comp, "app:1", ref); code != 0 {
				t.Fatalf("push %s: exit %d: %s", ref, code, stderr)
			}
			d, err := crane.Digest(ref)
			if err != nil {
				t.Fatal(err)
			}
			digests = append(digests, d)
		}
		if digests[0] != digests[1] {
			t.Errorf("%s: pushed manifests differ between the two roots: %s vs %s", comp, digests[0], digests[1])
		}
	}
}

// TestCLICheckReproducible: --check-reproducible passes on a reproducible
// Dockerfile and fails naming the file whose content a RUN makes differ.
func TestCLICheckReproducible(t *testing.T) {
	root := reproRoot(t)
	good := ctxDir(t, cliReproDockerfile, map[string]string{"src/main.txt": "main\n", "cfg.txt": "k=v\n"})
	_, stderr, code := run(t, root, "build", "--progress=plain", "--check-reproducible", "-t", "good", good)
	if code != 0 || !strings.Contains(stderr, "the build is reproducible") {
		t.Fatalf("reproducible Dockerfile: exit %d: %s", code, stderr)
	}
	bad := ctxDir(t, "FROM local/busybox\nRUN date > /built-at\n", map[string]string{})
	_, stderr, code = run(t, root, "build", "--progress=plain", "--check-reproducible", "-t", "bad", bad)
	if code == 0 {
		t.Fatalf("a RUN that writes the date passed the check: %s", stderr)
	}
	last := lastLine(stderr)
	for _, want := range []string{"not reproducible", "/built-at", "date > /built-at"} {
		if !strings.Contains(last, want) {
			t.Errorf("error does not name %q: %s", want, last)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(root, "check-*")); len(m) > 0 {
		t.Errorf("scratch areas left: %v", m)
	}

	_, stderr, code = run(t, root, "build", "--source-date-epoch", "yesterday", good)
	if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "--source-date-epoch") {
		t.Errorf("bad --source-date-epoch: exit %d: %q", code, stderr)
	}
	_, stderr, code = run(t, root, "build", "--check-reproducible", "--source-date-epoch", "now", good)
	if code == 0 || !strings.Contains(stderr, "fixed build time") {
		t.Errorf("--check-reproducible with now: exit %d: %q", code, stderr)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
