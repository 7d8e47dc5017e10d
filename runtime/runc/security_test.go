package runc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
