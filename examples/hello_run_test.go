package examples

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hello-run builds a program with RUN in a build stage and copies only the
// result into the final image; running that image prints the greeting.
func TestHelloRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs runc")
	}
	tmp := t.TempDir()
	lbuild := filepath.Join(tmp, "lbuild")
	gob := exec.Command("go", "build", "-o", lbuild, "../cmd/lbuild")
	gob.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build
	if out, err := gob.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	root := filepath.Join(tmp, "root")
	sh := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "LBUILD_ROOT="+root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	sh("./base/prepare.sh", filepath.Join(tmp, "base"))
	sh(lbuild, "build", "-q", "-t", "local/base", filepath.Join(tmp, "base"))
	sh(lbuild, "build", "-q", "-t", "hello-run", "hello-run")
	if out := sh(lbuild, "run", "--rm", "hello-run"); !strings.Contains(out, "Hello, lbuild! (built by a RUN step in lbuild)") {
		t.Errorf("hello-run printed %q", out)
	}
	// Only the program reached the final image, not the build stage's /src.
	if out := sh(lbuild, "run", "--rm", "hello-run", "sh", "-c", "test -e /src || echo clean"); strings.TrimSpace(out) != "clean" {
		t.Errorf("build stage files leaked into the image: %q", out)
	}
}
