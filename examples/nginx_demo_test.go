package examples

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNginxDemo builds lbuild and runs nginx/demo.sh with it, in a fresh
// store, the way "make demo-nginx" does, and checks its story: the nginx
// layer in tens of MB, images A and B with four layers sharing the first
// three, real nginx answering on every container's port, a change in one
// container only, and the push and pull of B moving only its own layer.
// The Debian base is made once (debootstrap, a minute or two) and kept in
// /var/cache/lbuild-examples, so later runs take seconds. It is skipped
// only when the Debian mirror cannot be reached (the demo exits 3).
func TestNginxDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the nginx demo needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	lbuild := filepath.Join(t.TempDir(), "lbuild")
	gob := exec.CommandContext(ctx, "go", "build", "-o", lbuild, "../cmd/lbuild")
	gob.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build
	if out, err := gob.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.CommandContext(ctx, "./nginx/demo.sh")
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
	t.Logf("nginx demo took %v", time.Since(start).Round(time.Millisecond))
	s := out.String()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 3 && strings.Contains(s, "cannot be reached") {
		t.Skipf("the Debian mirror cannot be reached: %s", strings.TrimSpace(s))
	}
	if err != nil {
		t.Fatalf("nginx/demo.sh: %v\n%s", err, s)
	}
	for _, re := range []string{
		// A and B: the same first three layers, their own index.html.
		`LAYER\s+SIZE\s+CREATED BY\s+pre-config-nginx\s+custom-nginx\n` +
			`\w{12}\s+\S+\s+ADD debian-bookworm-minbase.tar /\s+x\s+x\n` +
			`\w{12}\s+\S+\s+RUN /bin/sh -c apt-get update && apt-ge…\s+x\s+x\n` +
			`\w{12}\s+\S+\s+COPY nginx.conf /etc/nginx/nginx.conf\s+x\s+x\n` +
			`\w{12}\s+\S+\s+COPY index.html /usr/share/nginx/html/i…\s+x\s+-\n` +
			`\w{12}\s+\S+\s+COPY index.html /usr/share/nginx/html/i…\s+-\s+x\n`,
		// config-nginx reuses hello-nginx's layers; pre-config-nginx
		// shares only Debian and nginx with them.
		`RUN /bin/sh -c apt-get update && apt-ge…\s+-\s+x\s+x\s+x\s+x\n`,
		`COPY index.html /usr/share/nginx/html/i…\s+-\s+x\s+x\s+-\s+-\n`,
		`COPY nginx.conf /etc/nginx/nginx.conf\s+-\s+-\s+x\s+-\s+-\n`,
		`COPY nginx.conf /etc/nginx/nginx.conf\s+-\s+-\s+-\s+x\s+x\n`,
		// Real nginx on every container's port, a change in one only.
		`\(hello-1\): hello nginx\s+Server: nginx/\d`,
		`\(hello-2\): hello nginx\s+Server: nginx/\d`,
		`\(custom-1\): custom nginx\s+Server: nginx/\d`,
		`127\.0\.0\.1:\d+->80/tcp\s+hello-1\n`,
		`\(hello-1\): changed inside hello-1\n.*\(hello-2\): hello nginx\n`,
		`lbuild diff hello-1\n(.+\n)*C /usr/share/nginx/html/index.html\n`,
		`cat /usr/share/nginx/html/index.html\nhello nginx\n`,
		// The push of B sends one layer (see below); the pull of B fetches one.
		`latest: Pulling from custom-nginx\n(\w{12}: Already exists\n){3}\w{12}: Pull complete\n`,
		`Containers \(each container's own writable layer\)`,
		`demo-nginx: done`,
	} {
		if !regexp.MustCompile(re).MatchString(s) {
			t.Errorf("demo output lacks %q", re)
		}
	}
	checkPushSentOne(t, s, "custom-nginx", "pre-config-nginx", 4)
	if strings.Contains(regexp.MustCompile(`lbuild diff hello-2\n((?:[ACD] .+\n)*)`).FindString(s), "index.html") {
		t.Errorf("hello-2 shows hello-1's change")
	}
	// Images A and B have exactly four layers, the first three the same.
	a := regexp.MustCompile(`\nA: ((?:\w{12} ?)+)\n`).FindStringSubmatch(s)
	b := regexp.MustCompile(`\nB: ((?:\w{12} ?)+)\n`).FindStringSubmatch(s)
	if a == nil || b == nil {
		t.Errorf("demo output lacks the diff IDs of A and B")
	} else if la, lb := strings.Fields(a[1]), strings.Fields(b[1]); len(la) != 4 || len(lb) != 4 ||
		strings.Join(la[:3], " ") != strings.Join(lb[:3], " ") || la[3] == lb[3] {
		t.Errorf("layers of A %v and B %v: want 4 each, the first 3 the same", la, lb)
	}
	// The nginx layer's size, in tens of MB, in hello-nginx's history.
	if m := regexp.MustCompile(`RUN /bin/sh -c apt-get update && apt-get ins…\s+([\d.]+)MB`).FindStringSubmatch(s); m == nil {
		t.Errorf("hello-nginx's history lacks the RUN apt-get step with a size in MB")
	} else if mb, _ := strconv.ParseFloat(m[1], 64); mb < 10 || mb >= 100 {
		t.Errorf("the nginx layer is %sMB, want tens of MB", m[1])
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", s)
	}
}
