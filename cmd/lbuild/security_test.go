package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbuild/lbuild/builder/buildertest"
)

// filesHolding returns the files under dir whose content contains s.
func filesHolding(t *testing.T, dir, s string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(s)) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// A RUN secret leaves no file holding it in the store root: not after the
// build, and not after a build killed with SIGKILL mid-RUN once the next
// command has recovered the root (until then it sits in the dead step's
// bundle, in the root only root can enter).
func TestCLISecretAfterCrash(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	root := filepath.Join(t.TempDir(), "root")
	base := t.TempDir()
	if err := buildertest.BusyboxContext(base); err != nil {
		t.Skip(err)
	}
	if _, stderr, code := run(t, root, "build", "-t", "local/busybox", base); code != 0 {
		t.Fatal(stderr)
	}
	const secret = "s3cret-5be2d8" // 13 bytes; the Dockerfile must not hold it
	src := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(src, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}

	dir := ctxDir(t, "FROM local/busybox\n"+
		"RUN --mount=type=secret,id=tok,env=TOKEN test ${#TOKEN} -eq 13\n"+
		"RUN --mount=type=secret,id=tok test $(wc -c < /run/secrets/tok) -eq 13\n", map[string]string{})
	if _, stderr, code := run(t, root, "build", "--secret", "id=tok,src="+src, dir); code != 0 {
		t.Fatal(stderr)
	}
	if got := filesHolding(t, root, secret); len(got) != 0 {
		t.Errorf("after the build, the secret is in %v", got)
	}

	dir = ctxDir(t, "FROM local/busybox\nRUN --mount=type=secret,id=tok,env=TOKEN sleep 30\n", map[string]string{})
	cmd := exec.Command(lbuildBin, "--root", root, "build", "--progress=plain", "--secret", "id=tok,src="+src, dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); len(runcList(t, root)) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("RUN container never started:\n%s", stderr.String())
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if got := filesHolding(t, root, secret); len(got) == 0 {
		t.Log("no file holds the secret after the kill: only checking the recovery")
	} else if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the secret is in %v, under a root of mode %v (%v)", got, fi.Mode(), err)
	}
	if _, stderr, code := run(t, root, "ps"); code != 0 {
		t.Fatal(stderr)
	}
	if got := filesHolding(t, root, secret); len(got) != 0 {
		t.Errorf("after recovery, the secret is in %v", got)
	}
	assertNothingLeft(t, root)
}

// lbuild run applies Docker's default seccomp profile; --security-opt
// seccomp=unconfined lifts it, and other options are refused in one line.
func TestCLISecurityOpt(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	root := t.TempDir()
	base := t.TempDir()
	if err := buildertest.BusyboxContext(base); err != nil {
		t.Skip(err)
	}
	if _, stderr, code := run(t, root, "build", "-t", "local/busybox", base); code != 0 {
		t.Fatal(stderr)
	}
	status := []string{"local/busybox", "grep", "Seccomp:", "/proc/self/status"}
	if out, stderr, code := run(t, root, append([]string{"run", "--rm"}, status...)...); code != 0 || out != "Seccomp:\t2\n" {
		t.Errorf("default: %q, %q, exit %d", out, stderr, code)
	}
	if out, stderr, code := run(t, root, append([]string{"run", "--rm", "--security-opt", "seccomp=unconfined"}, status...)...); code != 0 || out != "Seccomp:\t0\n" {
		t.Errorf("unconfined: %q, %q, exit %d", out, stderr, code)
	}
	_, stderr, code := run(t, root, append([]string{"run", "--rm", "--security-opt", "no-new-privileges"}, status...)...)
	if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "seccomp=unconfined") {
		t.Errorf("unsupported option: exit %d, %q", code, stderr)
	}
}
