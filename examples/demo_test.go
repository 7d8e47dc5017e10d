// Package examples holds the example build contexts and the demo script;
// its test runs the demo end to end.
package examples

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo builds lbuild and runs demo.sh with it, in a fresh store, the way
// "make demo" does, and checks that its output shows the sharing table, the
// pages the containers served, and the push and pull that move only the
// layers the other side lacks.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo needs root")
	}
	for _, bin := range []string{"runc", "curl", "/bin/busybox"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("the demo needs %s", bin)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lbuild := filepath.Join(t.TempDir(), "lbuild")
	gob := exec.CommandContext(ctx, "go", "build", "-o", lbuild, "../cmd/lbuild")
	gob.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build
	if out, err := gob.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.CommandContext(ctx, "./demo.sh")
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "LBUILD_ROOT=") && !strings.HasPrefix(e, "LBUILD=") {
			env = append(env, e)
		}
	}
	cmd.Env = append(env, "LBUILD="+lbuild)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("demo took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, re := range []string{
		// The sharing table: the base in all four images, the index.html
		// layer in hello-web and config-web only, the pair sharing all but
		// the last layer.
		`LAYER\s+SIZE\s+CREATED BY\s+local/base\s+hello-web\s+config-web\s+pre-config-web`,
		`COPY rootfs/ /\s+x\s+x\s+x\s+x\n`,
		`COPY index.html /www/index.html\s+-\s+x\s+x\s+-\n`,
		`COPY index.html /www/index.html\s+-\s+-\s+-\s+x\n`,
		`COPY common/ /www/\s+x\s+x\n`,
		`COPY blue.html /www/index.html\s+x\s+-\n`,
		// The pages served, the change in one container only.
		`\(hello-1\): Hello from lbuild`,
		`\(hello-2\): Hello from lbuild`,
		`\(config-1\): Hello from lbuild`,
		`\(hello-1\): Changed inside hello-1`,
		`lbuild diff hello-1\nC /www\nC /www/index.html\n`,
		`lbuild diff hello-2\n\(no changes\)`,
		// The push of config-web sends only its own layer (see below);
		// its pull into a store holding hello-web fetches only that layer.
		`latest: Pulling from config-web\n(\w{12}: Already exists\n){2}\w{12}: Pull complete\n`,
		`Containers \(each container's own writable layer\)`,
		`demo: done`,
	} {
		if !regexp.MustCompile(re).MatchString(s) {
			t.Errorf("demo output lacks %q", re)
		}
	}
	checkPushSentOne(t, s, "config-web", "hello-web", 3)
	if t.Failed() {
		t.Logf("demo output:\n%s", s)
	}
}

// checkPushSentOne checks the demo's push of repo in out: layers lines, one
// "Pushed", the others mounted from repository from or already in the
// registry. Layers are reported as their uploads end, in any order.
func checkPushSentOne(t *testing.T, out, repo, from string, layers int) {
	t.Helper()
	re := regexp.MustCompile(`The push refers to repository \[127.0.0.1:\d+/` + regexp.QuoteMeta(repo) + `\]\n` +
		`((?:\w{12}: (?:Mounted from ` + regexp.QuoteMeta(from) + `|Layer already exists|Pushed)\n){` + strconv.Itoa(layers) + `})`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Errorf("demo output lacks the push of %s, %d layers", repo, layers)
		return
	}
	if n := strings.Count(m[1], ": Pushed\n"); n != 1 {
		t.Errorf("the push of %s sent %d layers, want 1:\n%s", repo, n, m[1])
	}
}
