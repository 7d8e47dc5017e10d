package runc

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// addApplets links more busybox applets into a newRootfs rootfs.
func addApplets(tb testing.TB, rootfs string, names ...string) {
	tb.Helper()
	for _, a := range names {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", a)); err != nil {
			tb.Fatal(err)
		}
	}
}

// usernsAllowed reports whether an unprivileged process may create a user
// namespace on this host (the escape below needs one).
func usernsAllowed() bool {
	if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return false
	}
	b, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
	return err != nil || strings.TrimSpace(string(b)) != "0"
}

// A process runs under Docker's default seccomp profile and capability set:
// without CAP_SYS_ADMIN it cannot get mount rights by creating a user
// namespace of its own. SeccompUnconfined lifts the filter (only).
func TestRunSeccomp(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	addApplets(t, rootfs, "unshare", "mount")
	if err := os.Mkdir(filepath.Join(rootfs, "mnt"), 0o755); err != nil {
		t.Fatal(err)
	}
	status := sh("grep -E '^(Seccomp|CapBnd|CapEff):' /proc/self/status")
	// Docker's default set: 0x00000000a80425fb.
	const caps = "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n"
	if out := mustRun(t, r, rootfs, Meta{Args: status}); out != caps+"Seccomp:\t2\n" {
		t.Errorf("status: got %q", out)
	}
	escape := sh("unshare -Urm sh -c 'mount --rbind / /mnt && echo escaped'")
	res := run(t, r, rootfs, Meta{Args: escape})
	if res.err == nil || strings.Contains(res.stdout, "escaped") || !strings.Contains(res.stderr, "Operation not permitted") {
		t.Errorf("unshare -Urm + mount under the default profile: got %+v", res)
	}

	if out := mustRun(t, r, rootfs, Meta{Args: status, SeccompUnconfined: true}); out != caps+"Seccomp:\t0\n" {
		t.Errorf("unconfined status: got %q", out)
	}
	if !usernsAllowed() {
		t.Log("unprivileged user namespaces are disabled on this host: not checking the unconfined escape")
		return
	}
	if out := mustRun(t, r, rootfs, Meta{Args: escape, SeccompUnconfined: true}); out != "escaped\n" {
		t.Errorf("unconfined: got %q", out)
	}
}

// Package managers work under the default profile: apt-get installs a local
// .deb (dpkg unpacks it, runs its maintainer script, which changes owners
// and modes) and dpkg removes it again, in a rootfs made of the host's
// Debian /usr (read-only) and copies of its /etc and dpkg database.
func TestRunAptDpkgUnderSeccomp(t *testing.T) {
	for _, tool := range []string{"apt-get", "dpkg", "dpkg-deb", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: not a Debian host", tool)
		}
	}
	r := newRunc(t)
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	for _, d := range []string{"usr", "var/lib", "var/log", "var/cache/apt/archives/partial", "var/lib/apt/lists/partial", "tmp", "root", "opt"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(rootfs, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		if target, err := os.Readlink("/" + l); err == nil {
			if err := os.Symlink(target, filepath.Join(rootfs, l)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cp := func(src, dst string) {
		t.Helper()
		if out, err := exec.Command("cp", "-a", src, filepath.Join(rootfs, dst)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", src, err, out)
		}
	}
	cp("/etc", "etc")
	cp("/var/lib/dpkg", "var/lib/dpkg")

	pkg := filepath.Join(tmp, "pkg")
	files := map[string]string{
		"DEBIAN/control": "Package: lbuild-seccomp-test\nVersion: 1.0\nArchitecture: all\n" +
			"Maintainer: lbuild <lbuild@example.invalid>\nDescription: test package\n",
		"DEBIAN/postinst": "#!/bin/sh\nset -e\nchown nobody:nogroup /opt/lbuild-test/hello\n" +
			"chmod 0640 /opt/lbuild-test/hello\nmkdir -p /var/lib/lbuild-test\n",
		"opt/lbuild-test/hello": "hello from a deb\n",
	}
	for name, data := range files {
		p := filepath.Join(pkg, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(rootfs, "tmp", "test.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v: %s", err, out)
	}

	out := mustRun(t, r, rootfs, Meta{
		Args: sh("set -e; grep Seccomp: /proc/self/status; " +
			"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/test.deb >/dev/null; " +
			"dpkg-query -W -f='${Status}\\n' lbuild-seccomp-test; " +
			"stat -c '%U:%G %a' /opt/lbuild-test/hello; cat /opt/lbuild-test/hello; " +
			"dpkg -r lbuild-seccomp-test >/dev/null; test ! -e /opt/lbuild-test/hello; echo removed"),
		Mounts: []Mount{{Type: "bind", Source: "/usr", Destination: "/usr", Options: []string{"ro"}}},
	})
	want := "Seccomp:\t2\ninstall ok installed\nnobody:nogroup 640\nhello from a deb\nremoved\n"
	if out != want {
		t.Errorf("got %q, want %q", out, want)
	}
}

// writerFunc is an io.Writer calling a function.
type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// onFirstWrite returns a writer that calls fn once, when the process first
// writes (its bundle exists then), and discards the output.
func onFirstWrite(fn func()) writerFunc {
	var once sync.Once
	return func(p []byte) (int, error) {
		once.Do(fn)
		return len(p), nil
	}
}

// filesHolding returns the files under dir whose content contains s,
// following dir's own symbolic links to directories (the state dir's runc
// and bundles are links into a tmpfs) but no others.
func filesHolding(t *testing.T, dir, s string) []string {
	t.Helper()
	var found []string
	seen := map[string]bool{}
	var walk func(dir string)
	walk = func(dir string) {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type()&fs.ModeSymlink != 0 && filepath.Dir(p) == dir {
				if real, err := filepath.EvalSymlinks(p); err == nil {
					walk(real)
				}
				return nil
			}
			if !d.Type().IsRegular() || seen[p] {
				return nil
			}
			seen[p] = true
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(s)) {
				found = append(found, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	walk(dir)
	return found
}

// A run's bundle is root's only, as its config.json holds the environment
// (RUN secrets passed as variables included); a non-root container user
// still reads the generated /etc files; and nothing holding the secret is
// left after Run returns, whether the process succeeds, fails or is
// cancelled.
func TestRunBundlePrivate(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	stateDir := filepath.Dir(r.root)
	const secret = "s3cret-2c9f1e"
	checkBundle := func() {
		ents, err := os.ReadDir(r.bundles)
		if err != nil {
			t.Error(err)
			return
		}
		var bundles []string
		for _, e := range ents {
			if e.IsDir() {
				bundles = append(bundles, filepath.Join(r.bundles, e.Name()))
			}
		}
		if len(bundles) != 1 {
			t.Errorf("bundles: %v", bundles)
			return
		}
		want := map[string]os.FileMode{"": 0o700 | fs.ModeDir, "config.json": 0o600, stubsFile: 0o600, "hosts": 0o644}
		for name, mode := range want {
			fi, err := os.Stat(filepath.Join(bundles[0], name))
			if err != nil || fi.Mode() != mode {
				t.Errorf("bundle %q: mode %v, %v; want %v", name, fi.Mode(), err, mode)
			}
		}
		if got := filesHolding(t, stateDir, secret); len(got) != 2 {
			t.Errorf("the secret is in %v during the run, want config.json and the file mount", got)
		}
	}
	var stderr bytes.Buffer
	meta := Meta{Args: sh("cat /etc/hosts /etc/resolv.conf /etc/hostname >/dev/null && id -u"),
		Env: append(testEnv, "TOKEN="+secret), UID: 65534, GID: 65534, Stderr: &stderr,
		Mounts: []Mount{{Type: "file", Destination: "/run/secrets/token", Data: []byte(secret)}}}
	meta.Stdout = onFirstWrite(checkBundle)
	if err := r.Run(context.Background(), rootfs, meta); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	checkGone := func(how string) {
		t.Helper()
		if got := filesHolding(t, stateDir, secret); len(got) != 0 {
			t.Errorf("%s: the secret is left in %v", how, got)
		}
		if ents, _ := os.ReadDir(r.bundles); len(ents) != 0 {
			t.Errorf("%s: bundles left: %v", how, ents)
		}
	}
	checkGone("success")

	meta.Args = sh("echo x; exit 3")
	meta.Stdout = onFirstWrite(checkBundle)
	var ee *ExitError
	if err := r.Run(context.Background(), rootfs, meta); !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("failing run: %v", err)
	}
	checkGone("failure")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	meta.Args = sh("echo x; sleep 1000")
	meta.Stdout = onFirstWrite(func() { checkBundle(); cancel() })
	if err := r.Run(ctx, rootfs, meta); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
	checkGone("cancel")
}

// A "file" mount is a read-only file with the given content, owner and
// mode (0400 by default), as BuildKit mounts a secret.
func TestRunFileMount(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	addApplets(t, rootfs, "chmod")
	before := tree(t, rootfs)
	mounts := []Mount{
		{Type: "file", Destination: "/run/secrets/a", Data: []byte("alpha")},
		{Type: "file", Destination: "/etc/b.conf", Data: []byte("beta"), Mode: 0o440, UID: 1000, GID: 1001},
	}
	script := "stat -c '%n %u:%g %a' /run/secrets/a /etc/b.conf; cat /run/secrets/a /etc/b.conf; echo; " +
		"echo x > /etc/b.conf 2>/dev/null || echo read-only; chmod 666 /etc/b.conf 2>/dev/null || echo no-chmod"
	out := mustRun(t, r, rootfs, Meta{Args: sh(script), Mounts: mounts})
	want := "/run/secrets/a 0:0 400\n/etc/b.conf 1000:1001 440\nalphabeta\nread-only\nno-chmod\n"
	if out != want {
		t.Errorf("root: got %q, want %q", out, want)
	}
	// The owner (by uid) reads its file; another user reads neither.
	out = mustRun(t, r, rootfs, Meta{Args: sh("cat /etc/b.conf; cat /run/secrets/a 2>/dev/null || echo denied"), UID: 1000, GID: 1000, Mounts: mounts})
	if out != "betadenied\n" {
		t.Errorf("uid 1000: got %q", out)
	}
	if after := tree(t, rootfs); !slices.Equal(before, after) {
		t.Errorf("rootfs changed:\nbefore %v\nafter  %v", before, after)
	}

	for _, bad := range []Mount{
		{Type: "file", Source: "/etc/passwd", Destination: "/x"},
		{Type: "file", Destination: "/x", Mode: fs.ModeSetuid | 0o755},
		{Type: "tmpfs", Destination: "/x", Data: []byte("x")},
	} {
		if err := r.Run(context.Background(), rootfs, Meta{Args: []string{"true"}, Mounts: []Mount{bad}}); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
