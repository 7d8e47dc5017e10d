package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"net/http/httptest"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/registry"
)

var lbuildBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lbuild-cli-")
	if err != nil {
		panic(err)
	}
	lbuildBin = filepath.Join(dir, "lbuild")
	gob := exec.Command("go", "build", "-o", lbuildBin, ".")
	gob.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build
	if out, err := gob.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build lbuild: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the lbuild binary with a store root and returns stdout, stderr
// and the exit code.
func run(t *testing.T, root string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lbuildBin, append([]string{"--root", root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func ctxDir(t *testing.T, dockerfile string, files map[string]string) string {
	dir := t.TempDir()
	files["Dockerfile"] = dockerfile
	for name, data := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCLIBuildAndInspect(t *testing.T) {
	root := t.TempDir()
	dir := ctxDir(t, "FROM scratch\nLABEL app=demo\nCOPY a.txt /a.txt\nCOPY <<EOF /b.txt\nheredoc\nline two\nEOF\nENV MODE=prod\nCMD [\"/a\"]\n", map[string]string{"a.txt": "A"})

	// The short form: lbuild -f Dockerfile -t NAME CONTEXT.
	_, stderr, code := run(t, root, "-f", filepath.Join(dir, "Dockerfile"), "-t", "app:1", "--progress=plain", dir)
	if code != 0 {
		t.Fatalf("build exit %d: %s", code, stderr)
	}
	for _, want := range []string{"#1 [1/6] FROM scratch", "#3 [3/6] COPY a.txt /a.txt", "DONE", "naming to app:1", "COPY <<EOF /b.txt"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, stderr)
		}
	}
	_, stderr, _ = run(t, root, "build", "-t", "app:1", "--progress=plain", dir)
	if strings.Count(stderr, "CACHED") != 5 {
		t.Errorf("rebuild not all CACHED:\n%s", stderr)
	}

	out, _, code := run(t, root, "images")
	if code != 0 || !strings.Contains(out, "REPOSITORY") || !strings.Contains(out, "app ") || !strings.Contains(out, " 1 ") {
		t.Errorf("images (%d):\n%s", code, out)
	}
	out, _, _ = run(t, root, "history", "app:1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "IMAGE") || !strings.Contains(lines[0], "CREATED BY") || !strings.Contains(lines[0], "COMMENT") {
		t.Errorf("history:\n%s", out)
	}
	if !strings.Contains(out, "<missing>") || !strings.Contains(out, `COPY <<EOF /b.txt`) {
		t.Errorf("history rows:\n%s", out)
	}

	out, _, _ = run(t, root, "inspect", "app:1")
	var got []struct {
		ID       string `json:"Id"`
		RepoTags []string
		Config   struct {
			Env    []string
			Cmd    []string
			Labels map[string]string
		}
		RootFS struct {
			Type   string
			Layers []string
		}
		History []struct {
			CreatedBy  string `json:"created_by"`
			EmptyLayer bool   `json:"empty_layer"`
		}
		Size int64
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 {
		t.Fatalf("inspect JSON: %v\n%s", err, out)
	}
	g := got[0]
	if !strings.HasPrefix(g.ID, "sha256:") || len(g.RepoTags) != 1 || g.RepoTags[0] != "app:1" || len(g.RootFS.Layers) != 2 ||
		g.Config.Labels["app"] != "demo" || g.Config.Cmd[0] != "/a" || len(g.History) != 5 || g.Size == 0 {
		t.Errorf("inspect: %+v", g)
	}

	if _, stderr, code := run(t, root, "tag", "app:1", "app:2"); code != 0 {
		t.Fatalf("tag: %s", stderr)
	}
	out, _, _ = run(t, root, "rmi", "app:2")
	if !strings.Contains(out, "Untagged: app:2") {
		t.Errorf("rmi: %s", out)
	}
	if _, _, code := run(t, root, "inspect", "app:1"); code != 0 {
		t.Error("rmi of one tag removed the other")
	}
}

// Bad input: one error line naming the file and line, exit 1, store as it was.
func TestCLIErrors(t *testing.T) {
	root := t.TempDir()
	dir := ctxDir(t, "FROM scratch\nCOPY a.txt /a\n", map[string]string{"a.txt": "A"})
	if _, stderr, code := run(t, root, "build", "-t", "ok:1", dir); code != 0 {
		t.Fatal(stderr)
	}
	index := filepath.Join(root, "oci", "index.json")
	before, _ := os.ReadFile(index)

	bad := ctxDir(t, "FROM scratch\nCOPY missing.txt /m\n", map[string]string{})
	syntax := ctxDir(t, "FROM scratch\nBOGUS x\n", map[string]string{})
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing source", []string{"build", "-t", "ok:1", bad}, "Dockerfile:2: source \"missing.txt\": not found in the build context"},
		{"unknown instruction", []string{"build", "-t", "ok:1", syntax}, "Dockerfile:2: unknown instruction: BOGUS"},
		{"unknown flag", []string{"build", "--bogus", dir}, "unknown flag: --bogus"},
		{"no such image", []string{"history", "nope:1"}, "not found"},
		{"unwritable root", []string{"--root", filepath.Join(file, "x"), "images"}, "not writable"},
		{"bad progress", []string{"build", "--progress=fancy", dir}, "unknown progress mode"},
		{"bad build network", []string{"build", "--network=bridge", dir}, "--network=bridge: use default, host or none"},
		{"bad run network", []string{"run", "--network=bridge", "ok:1", "true"}, `unknown network "bridge": use default, host or none`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, root, tc.args...)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "error: ") || !strings.Contains(last, tc.want) {
				t.Errorf("stderr %q, want an error line with %q", stderr, tc.want)
			}
			if strings.Contains(stderr, "panic") || strings.Contains(stderr, "Usage:") {
				t.Errorf("stderr: %s", stderr)
			}
		})
	}
	after, _ := os.ReadFile(index)
	if !bytes.Equal(before, after) {
		t.Errorf("failed commands changed index.json:\n%s\n->\n%s", before, after)
	}
}

func TestCLIBuildOutputsAndPush(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	root := t.TempDir()
	dir := ctxDir(t, "FROM scratch\nCOPY a.txt /a.txt\n", map[string]string{"a.txt": "A"})
	ociDir := filepath.Join(t.TempDir(), "layout")
	archive := filepath.Join(t.TempDir(), "img.tar")
	ref := host + "/out/app:1"
	_, stderr, code := run(t, root, "build", "-t", ref, "--push",
		"--output", "type=oci,dest="+ociDir, "--output", "type=docker,dest="+archive, dir)
	if code != 0 {
		t.Fatalf("build: %s", stderr)
	}
	if !strings.Contains(stderr, "Pushed") || !strings.Contains(stderr, "digest: sha256:") {
		t.Errorf("push output:\n%s", stderr)
	}
	if _, err := crane.Digest(ref, crane.Insecure); err != nil {
		t.Errorf("pushed image not in the registry: %v", err)
	}
	if _, err := exec.LookPath("skopeo"); err == nil {
		for _, src := range []string{"oci:" + ociDir, "docker-archive:" + archive} {
			if out, err := exec.Command("skopeo", "inspect", src).CombinedOutput(); err != nil {
				t.Errorf("skopeo inspect %s: %v\n%s", src, err, out)
			}
		}
	}
	if _, stderr, code := run(t, root, "build", "--output", "type=tarball", dir); code != 1 || !strings.Contains(stderr, "unknown type") {
		t.Errorf("bad --output: %d %s", code, stderr)
	}
}

func TestSubcommandsUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range newRootCmd().Commands() {
		if seen[c.Name()] {
			t.Errorf("subcommand %q registered twice", c.Name())
		}
		seen[c.Name()] = true
	}
	for _, want := range []string{"build", "images", "history", "inspect", "tag", "rmi", "pull", "push", "save", "load", "login", "logout", "run", "ps", "stop", "rm", "logs", "exec", "diff", "commit", "share", "du", "system"} {
		if !seen[want] {
			t.Errorf("subcommand %q missing", want)
		}
	}
}

// rmi as docker's: a last tag untags and deletes; a shared image loses only
// the tag; an ID with several tags needs -f; a missing name fails in one
// line while the other arguments are still removed.
func TestCLIRmi(t *testing.T) {
	root := t.TempDir()
	dir := ctxDir(t, "FROM scratch\nCOPY a /a\n", map[string]string{"a": "1"})
	mustRun := func(args ...string) string {
		t.Helper()
		out, stderr, code := run(t, root, args...)
		if code != 0 {
			t.Fatalf("lbuild %v: exit %d: %s", args, code, stderr)
		}
		return out
	}
	mustRun("build", "-q", "-t", "v:1", dir)
	os.WriteFile(filepath.Join(dir, "a"), []byte("2"), 0o644)
	id2 := strings.TrimSpace(mustRun("build", "-q", "-t", "v:2", dir))
	mustRun("tag", "v:2", "w:1")

	// The last name of v:1's image: untagged and deleted, exit 0.
	out := mustRun("rmi", "v:1")
	if !strings.Contains(out, "Untagged: v:1") || !strings.Contains(out, "Deleted: sha256:") {
		t.Errorf("rmi v:1 printed %q", out)
	}
	// An ID with two names: refused without -f.
	if _, stderr, code := run(t, root, "rmi", id2); code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "pass -f") {
		t.Errorf("rmi of a twice-tagged ID: exit %d, %q", code, stderr)
	}
	// Several at once, one missing: the others go, exit 1, one error line.
	out, stderr, code := run(t, root, "rmi", "v:2", "nope", "w:1")
	if code != 1 || !strings.Contains(stderr, `"nope"`) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("rmi v:2 nope w:1: exit %d, stderr %q", code, stderr)
	}
	if !strings.Contains(out, "Untagged: v:2") || !strings.Contains(out, "Untagged: w:1") || !strings.Contains(out, "Deleted: "+id2) {
		t.Errorf("rmi v:2 nope w:1 printed %q", out)
	}
	if out := mustRun("images", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("images left: %q", out)
	}
}
