package runc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var testEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}

var applets = []string{"sh", "ls", "cat", "echo", "id", "ip", "touch", "mkdir", "sleep",
	"hostname", "ps", "wc", "grep", "true", "false", "head", "stat", "rm", "nc", "wget", "nslookup"}

// newRunc returns a Runc with state in a temp dir, skipping the test if
// runc is not installed or we are not root.
func newRunc(tb testing.TB) *Runc {
	tb.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		tb.Skip("runc not in PATH")
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root")
	}
	r, err := NewRunc("", tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		out, _ := r.runtimeCmd(context.Background(), "list", "--quiet")
		if ids := strings.Fields(string(out)); len(ids) != 0 {
			tb.Errorf("runtime state left: %v", ids)
			for _, id := range ids {
				_ = r.delete(context.Background(), id)
			}
		}
	})
	return r
}

// newRootfs returns a busybox rootfs: bin/busybox and applet symlinks,
// nothing else (no /proc, /dev or /etc).
func newRootfs(tb testing.TB) string {
	tb.Helper()
	rootfs := filepath.Join(tb.TempDir(), "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		tb.Fatal(err)
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		tb.Skipf("no static busybox: %v", err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin/busybox"), data, 0o755); err != nil {
		tb.Fatal(err)
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", a)); err != nil {
			tb.Fatal(err)
		}
	}
	return rootfs
}

// tree returns every path under root (relative), with a type marker.
func tree(tb testing.TB, root string) []string {
	tb.Helper()
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		paths = append(paths, fmt.Sprintf("%s %v", rel, d.Type()))
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return paths
}

// checkNoMounts fails if any mount under rootfs is visible in this mount
// namespace.
func checkNoMounts(tb testing.TB, rootfs string) {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == rootfs || strings.HasPrefix(f[4], rootfs+"/")) {
			tb.Errorf("mount left under rootfs: %s", line)
		}
	}
}

type result struct {
	stdout, stderr string
	err            error
}

func run(tb testing.TB, r *Runc, rootfs string, meta Meta) result {
	tb.Helper()
	var stdout, stderr bytes.Buffer
	if meta.Env == nil {
		meta.Env = testEnv
	}
	meta.Stdout, meta.Stderr = &stdout, &stderr
	err := r.Run(context.Background(), rootfs, meta)
	checkNoMounts(tb, rootfs)
	return result{stdout.String(), stderr.String(), err}
}

func mustRun(tb testing.TB, r *Runc, rootfs string, meta Meta) string {
	tb.Helper()
	res := run(tb, r, rootfs, meta)
	if res.err != nil {
		tb.Fatalf("%v: %v\nstdout: %s\nstderr: %s", meta.Args, res.err, res.stdout, res.stderr)
	}
	return res.stdout
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

func TestRunOutput(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	res := run(t, r, rootfs, Meta{Args: sh("echo hello; echo oops >&2")})
	if res.err != nil || res.stdout != "hello\n" || res.stderr != "oops\n" {
		t.Fatalf("got %+v", res)
	}
	// An *os.File is passed through without a copying pipe.
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := r.Run(context.Background(), rootfs, Meta{Args: []string{"echo", "file"}, Env: testEnv, Stdout: f}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f.Name()); string(b) != "file\n" {
		t.Fatalf("file got %q", b)
	}
	// Stdin.
	res = run(t, r, rootfs, Meta{Args: []string{"cat"}, Stdin: strings.NewReader("in put")})
	if res.err != nil || res.stdout != "in put" {
		t.Fatalf("stdin: got %+v", res)
	}
}

func TestRunExitCode(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	for _, tc := range []struct {
		args []string
		code int
	}{
		{sh("exit 3"), 3},
		{[]string{"false"}, 1},
		{sh("sh -c 'kill -9 $$'; exit $?"), 137},
	} {
		err := run(t, r, rootfs, Meta{Args: tc.args}).err
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != tc.code {
			t.Errorf("%v: got %v, want exit code %d", tc.args, err, tc.code)
		}
	}

	// The container's init killed from outside: 128+SIGKILL.
	marker := fmt.Sprint(100000 + rand.IntN(900000))
	go func() {
		for range 100 {
			time.Sleep(50 * time.Millisecond)
			if pids := procsWithArg(marker); len(pids) == 1 {
				_ = syscall.Kill(pids[0], syscall.SIGKILL)
				return
			}
		}
	}()
	err := run(t, r, rootfs, Meta{Args: []string{"sleep", marker}}).err
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 137 {
		t.Errorf("killed init: got %v, want exit code 137", err)
	}
}

func TestRunRuntimeError(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	before := tree(t, rootfs)
	err := run(t, r, rootfs, Meta{Args: []string{"no-such-command"}}).err
	var ee *ExitError
	if err == nil || errors.As(err, &ee) || !strings.Contains(err.Error(), "executable file not found") {
		t.Fatalf("got %v, want the runtime's error", err)
	}
	t.Log(err)
	if after := tree(t, rootfs); !slices.Equal(before, after) {
		t.Errorf("rootfs changed:\nbefore %v\nafter  %v", before, after)
	}
	// Invalid input is rejected before the runtime is involved.
	for _, m := range []Meta{
		{},
		{Args: []string{"true"}, Cwd: "rel"},
		{Args: []string{"true"}, Network: "bridge"},
		{Args: []string{"true"}, Mounts: []Mount{{Type: "overlay", Destination: "/x"}}},
		{Args: []string{"true"}, Tty: true},
	} {
		if err := r.Run(context.Background(), rootfs, m); err == nil {
			t.Errorf("%+v: no error", m)
		}
	}
}

func TestRunEnvCwdUser(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	out := mustRun(t, r, rootfs, Meta{
		Args:           sh(`echo "$FOO"; pwd; id -u; id -g; id -G; touch mine`),
		Env:            append([]string{"FOO=bar baz"}, testEnv...),
		Cwd:            "/home/user/src",
		UID:            1000,
		GID:            1001,
		AdditionalGids: []uint32{2000, 2001},
	})
	want := "bar baz\n/home/user/src\n1000\n1001\n1001 2000 2001\n"
	if out != want {
		t.Errorf("got %q, want %q", out, want)
	}
	for _, p := range []string{"home", "home/user", "home/user/src", "home/user/src/mine"} {
		fi, err := os.Stat(filepath.Join(rootfs, p))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 1000 || st.Gid != 1001 {
			t.Errorf("%s owned by %d:%d", p, st.Uid, st.Gid)
		}
	}
	// Root by default, cwd / by default.
	if out := mustRun(t, r, rootfs, Meta{Args: sh("id -u; pwd")}); out != "0\n/\n" {
		t.Errorf("defaults: got %q", out)
	}
}

func TestRunNetwork(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	links := func(network string) []string {
		out := mustRun(t, r, rootfs, Meta{Args: []string{"ip", "-o", "link"}, Network: network})
		var names []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) > 1 {
				names = append(names, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
			}
		}
		return names
	}
	if got := links("none"); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("none: links %v, want [lo]", got)
	}
	for _, n := range []string{"", NetworkPrivate} {
		if got := links(n); !slices.Equal(got, []string{"lo", "tap0"}) {
			t.Errorf("%q: links %v, want [lo tap0]", n, got)
		}
	}
	hostOut, err := exec.Command("ip", "-o", "link").Output()
	if err != nil {
		t.Skip("no ip on the host")
	}
	hostN := len(strings.Split(strings.TrimSpace(string(hostOut)), "\n"))
	if got := links("host"); len(got) != hostN {
		t.Errorf("host: links %v, host has %d", got, hostN)
	}
	t.Logf("host has %d links", hostN)
	if res := run(t, r, rootfs, Meta{Args: []string{"true"}, Network: "bridge"}); res.err == nil ||
		!strings.Contains(res.err.Error(), `unknown network mode "bridge"`) {
		t.Errorf("network bridge: %v", res.err)
	}
}

// hostListener listens on the host's 127.0.0.1 and greets every
// connection; it returns the port and the number of connections accepted
// so far.
func hostListener(t *testing.T) (int, func() int64) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Write([]byte("hello-from-host\n"))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, n.Load
}

// A service on the host's loopback is out of reach on the private network,
// both as 127.0.0.1 (the container's own loopback) and as the gateway
// 10.0.2.2; the host network reaches it.
func TestRunPrivateNetworkNoHostLoopback(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	port, accepted := hostListener(t)
	for _, n := range []string{"", NetworkPrivate} {
		res := run(t, r, rootfs, Meta{Network: n, Args: sh(fmt.Sprintf(
			"nc 127.0.0.1 %[1]d </dev/null; nc 10.0.2.2 %[1]d </dev/null; wget -q -O - http://10.0.2.2:%[1]d/; true", port))})
		if res.err != nil {
			t.Fatalf("%q: %v: %s", n, res.err, res.stderr)
		}
		if strings.Contains(res.stdout, "hello-from-host") {
			t.Errorf("%q: reached the host's loopback: %q", n, res.stdout)
		}
		t.Logf("%q: %s", n, res.stderr)
	}
	if got := accepted(); got != 0 {
		t.Fatalf("the host's listener accepted %d connections from the private network", got)
	}
	out := mustRun(t, r, rootfs, Meta{Network: NetworkHost, Args: sh(fmt.Sprintf("nc 127.0.0.1 %d </dev/null", port))})
	if out != "hello-from-host\n" || accepted() != 1 {
		t.Errorf("host network: %q, %d connections", out, accepted())
	}
}

// debianMirror is the only outside host tests may reach (apt's mirror).
const debianMirror = "deb.debian.org"

// The private network reaches the outside world by name, as apt-get does:
// an HTTP fetch of the Debian mirror's Release file, with the resolver of
// the generated resolv.conf and with slirp4netns's DNS forwarder.
func TestRunPrivateNetworkOutbound(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	c, err := net.DialTimeout("tcp", debianMirror+":80", 10*time.Second)
	if err != nil {
		t.Skipf("the Debian mirror %s:80 is unreachable from the host too: %v", debianMirror, err)
	}
	c.Close()
	out := mustRun(t, r, rootfs, Meta{Args: sh(
		"wget -q -O - http://" + debianMirror + "/debian/dists/bookworm/Release | head -n 3; " +
			"nslookup " + debianMirror + " " + slirpDNS + " >/dev/null && echo forwarder-ok")})
	if !strings.Contains(out, "Origin: Debian\n") || !strings.Contains(out, "forwarder-ok\n") {
		t.Errorf("output %q", out)
	}
}

func TestPrivateResolvConf(t *testing.T) {
	for _, c := range []struct{ host, want string }{
		{"nameserver 10.255.255.53\n", "nameserver 10.255.255.53\n"},
		{"# systemd\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n",
			"# systemd\nnameserver 10.0.2.3\noptions edns0 trust-ad\nsearch lan\n"},
		{"nameserver 127.0.0.1\nnameserver ::1\nnameserver 192.0.2.1", "nameserver 10.0.2.3\nnameserver 192.0.2.1\n"},
		{"nameserver fe80::1%eth0\n", "nameserver fe80::1%eth0\n"},
		{"search example.com\n", "search example.com\nnameserver 10.0.2.3\n"},
		{"", "nameserver 10.0.2.3\n"},
	} {
		if got := string(privateResolvConf([]byte(c.host))); got != c.want {
			t.Errorf("%q: got %q, want %q", c.host, got, c.want)
		}
	}
}

func TestRunEtcFiles(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	out := mustRun(t, r, rootfs, Meta{
		Args: sh("cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; cat /etc/hostname; hostname; " +
			"echo x >> /etc/hosts 2>/dev/null && echo hosts-writable; true"),
		Hostname: "builder7",
	})
	parts := strings.Split(out, "---\n")
	hostResolv, _ := os.ReadFile("/etc/resolv.conf")
	if len(parts) != 3 || parts[0] != string(hostResolv) {
		t.Fatalf("resolv.conf: got %q", out)
	}
	if !strings.Contains(parts[1], "127.0.0.1\tlocalhost builder7\n") || !strings.Contains(parts[1], "::1\t") {
		t.Errorf("hosts: %q", parts[1])
	}
	if parts[2] != "builder7\nbuilder7\n" {
		t.Errorf("hostname: %q", parts[2])
	}
	if out := mustRun(t, r, rootfs, Meta{Args: []string{"hostname"}}); out != "lbuild\n" {
		t.Errorf("default hostname %q", out)
	}
}

func TestRunDevices(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	out := mustRun(t, r, rootfs, Meta{
		Args: sh("ls /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty >/dev/null && " +
			"echo x > /dev/null && head -c 16 /dev/urandom | wc -c && head -c 4 /dev/zero | wc -c && " +
			"grep -c -E ' /dev/(pts|shm|mqueue) ' /proc/mounts && grep ' /sys ' /proc/mounts | grep -c ro, && " +
			"ulimit -n"),
	})
	if want := fmt.Sprintf("16\n4\n3\n1\n%d\n", r.nofile); out != want {
		t.Errorf("got %q, want %q", out, want)
	}
}

func TestNofileLimit(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	n := nofileLimit()
	t.Logf("RLIMIT_NOFILE for containers: %d (own hard limit %d)", n, rl.Max)
	if n != wantNofile && n != rl.Max {
		t.Errorf("got %d", n)
	}
}

func TestRunMounts(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	roDir, rwDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(roDir, "in"), []byte("ro data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := tree(t, rootfs)
	res := run(t, r, rootfs, Meta{
		Args: sh(`cat /ro/in; touch /ro/x 2>/dev/null && echo ro-writable; echo hi > /cache/a/f && echo rw-ok;
cat /run/secrets/s; echo t > /tmp/t && grep -c '^tmpfs /tmp ' /proc/mounts`),
		Mounts: []Mount{
			{Type: "bind", Source: roDir, Destination: "/ro", Options: []string{"ro"}},
			{Type: "bind", Source: rwDir, Destination: "/cache/a"},
			{Type: "bind", Source: secret, Destination: "/run/secrets/s", Options: []string{"ro"}},
			{Type: "tmpfs", Destination: "/tmp", Options: []string{"mode=1777", "size=1m"}},
		},
	})
	if res.err != nil {
		t.Fatalf("%v: %s", res.err, res.stderr)
	}
	if want := "ro data\nrw-ok\ns3cret\n1\n"; res.stdout != want {
		t.Errorf("got %q, want %q", res.stdout, want)
	}
	if b, err := os.ReadFile(filepath.Join(rwDir, "f")); err != nil || string(b) != "hi\n" {
		t.Errorf("rw bind: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(roDir, "x")); err == nil {
		t.Error("ro bind was written")
	}
	if after := tree(t, rootfs); !slices.Equal(before, after) {
		t.Errorf("rootfs changed:\nbefore %v\nafter  %v", before, after)
	}
}

// TestRunStubsRemoved checks that what the runtime created in the rootfs
// is removed while what the process wrote stays.
func TestRunStubsRemoved(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	before := tree(t, rootfs)
	mustRun(t, r, rootfs, Meta{
		Args: sh("echo out > /out.txt; echo new > /etc/new.conf; mkdir /mnt/data/keep; echo k > /mnt/data/keep/f; touch /dev/devfile"),
		Mounts: []Mount{
			{Type: "tmpfs", Destination: "/mnt/cache/deep"},
			{Type: "bind", Source: t.TempDir(), Destination: "/opt/src"},
			{Type: "tmpfs", Destination: "/mnt/data"},
		},
	})
	after := tree(t, rootfs)
	want := append(slices.Clone(before), "etc d---------", "etc/new.conf ----------", "out.txt ----------")
	slices.Sort(want)
	slices.Sort(after)
	if !slices.Equal(after, want) {
		t.Errorf("rootfs after run:\n got %v\nwant %v", after, want)
	}

	// In a rootfs that already has the mount points, nothing is removed
	// and existing /etc files keep their content.
	for _, d := range []string{"proc", "sys", "dev", "etc", "mnt/cache"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"etc/hosts", "etc/resolv.conf"} {
		if err := os.WriteFile(filepath.Join(rootfs, f), []byte("image "+f+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/hostname"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	before = tree(t, rootfs)
	if out := mustRun(t, r, rootfs, Meta{
		Args:   sh("cat /etc/hosts"),
		Mounts: []Mount{{Type: "tmpfs", Destination: "/mnt/cache"}},
	}); !strings.Contains(out, "localhost") {
		t.Errorf("generated hosts not mounted: %q", out)
	}
	if after := tree(t, rootfs); !slices.Equal(before, after) {
		t.Errorf("rootfs changed:\nbefore %v\nafter  %v", before, after)
	}
	for _, f := range []string{"etc/hosts", "etc/resolv.conf"} {
		if b, _ := os.ReadFile(filepath.Join(rootfs, f)); string(b) != "image "+f+"\n" {
			t.Errorf("%s: %q", f, b)
		}
	}
}

// TestRunSymlinkedEtc: an absolute symlink in the rootfs is resolved
// inside it, and the stub clean-up never leaves the rootfs.
func TestRunSymlinkedEtc(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(rootfs, "escape")); err != nil {
		t.Fatal(err)
	}
	// /etc -> /escape/etc must resolve to rootfs/<outside>/etc, not outside.
	if err := os.Symlink("/escape/etc", filepath.Join(rootfs, "etc")); err != nil {
		t.Fatal(err)
	}
	mustRun(t, r, rootfs, Meta{Args: []string{"true"}, Cwd: "/escape/work"})
	ents, _ := os.ReadDir(outside)
	if len(ents) != 0 {
		t.Errorf("runtime wrote outside the rootfs: %v", ents)
	}
	checkNoMounts(t, outside)
}

// procsWithArg returns the pids whose argv contains arg.
func procsWithArg(arg string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if slices.Contains(strings.Split(string(b), "\x00"), arg) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestRunCancel(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	before := tree(t, rootfs)
	marker := fmt.Sprint(100000 + rand.IntN(900000))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := r.Run(ctx, rootfs, Meta{Args: []string{"sleep", marker}, Env: testEnv})
	took := time.Since(start)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	t.Logf("cancelled run returned after %v: %v", took, err)
	if took > 3*time.Second {
		t.Errorf("took %v", took)
	}
	checkRunLeftNothing(t, r, rootfs, marker)
	if after := tree(t, rootfs); !slices.Equal(before, after) {
		t.Errorf("rootfs changed:\nbefore %v\nafter  %v", before, after)
	}

	// Cancelled at once, and cancelled while runc is still starting.
	for _, d := range []time.Duration{0, 5 * time.Millisecond, 30 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		err := r.Run(ctx, rootfs, Meta{Args: []string{"sleep", marker}, Env: testEnv})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("timeout %v: got %v", d, err)
		}
	}
	if pids := procsWithArg(marker); len(pids) != 0 {
		t.Errorf("processes left: %v", pids)
	}
	if after := tree(t, rootfs); !slices.Equal(before, after) {
		t.Errorf("rootfs changed:\nbefore %v\nafter  %v", before, after)
	}
}

// When the runtime itself is killed while the process runs, Run still
// deletes the container it left (its state dir, and the process with it):
// the state-dir check that lets a normal exit skip "runc delete" must not
// skip it then.
func TestRunRuntimeKilled(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	marker := fmt.Sprint(100000 + rand.IntN(900000))
	errc := make(chan error, 1)
	go func() {
		errc <- r.Run(context.Background(), rootfs, Meta{Args: []string{"sleep", marker}, Env: testEnv, Network: NetworkNone})
	}()
	for deadline := time.Now().Add(10 * time.Second); len(procsWithArg(marker)) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the container's process did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// "runc --root <r.root> ... run": the runtime process, not the
	// container's ("runc init", then sleep).
	pids := procsWithArg(r.root)
	if len(pids) != 1 {
		t.Fatalf("runtime processes %v, want one", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("got %v, want the runtime killed", err)
	}
	checkRunLeftNothing(t, r, rootfs, marker)
}

// checkRunLeftNothing checks that no process of a run of "sleep marker"
// is left, nor runtime state, bundles or mounts in rootfs.
func checkRunLeftNothing(t *testing.T, r *Runc, rootfs, marker string) {
	t.Helper()
	if pids := procsWithArg(marker); len(pids) != 0 {
		t.Errorf("processes left: %v", pids)
	}
	if out, _ := r.runtimeCmd(context.Background(), "list", "--quiet"); len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("runtime state left: %s", out)
	}
	if ents, _ := os.ReadDir(r.bundles); len(ents) != 0 {
		t.Errorf("bundles left: %v", ents)
	}
	checkNoMounts(t, rootfs)
}

// createContainer starts "sleep marker" with runc create under id, as a
// run of a (possibly dead) lbuild process would have left it.
func createContainer(t *testing.T, r *Runc, rootfs, id, marker string) {
	t.Helper()
	bundle := filepath.Join(r.bundles, id)
	if err := os.Mkdir(bundle, 0o711); err != nil {
		t.Fatal(err)
	}
	meta := Meta{Args: []string{"sleep", marker}, Env: testEnv, Mounts: []Mount{{Type: "tmpfs", Destination: "/stub/" + id}}}
	if err := normalizeMeta(&meta); err != nil {
		t.Fatal(err)
	}
	stubs, err := recordStubs(rootfs, append(append(slices.Clone(systemMountDests), etcFiles...), "/stub/"+id))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeBundle(bundle, rootfs, &meta, r.nofile, stubs); err != nil {
		t.Fatal(err)
	}
	// The private network's namespace, as Run mounts it (its slirp4netns
	// is not needed: it dies with its lbuild anyway).
	if err := newNetns(filepath.Join(bundle, netnsFile)); err != nil {
		t.Fatal(err)
	}
	// The container inherits runc create's stdio: give it files, not
	// pipes that would never close.
	logPath := filepath.Join(t.TempDir(), "create.log")
	cmd := exec.Command(r.runtime, "--root", r.root, "--log", logPath, "create", "--bundle", bundle, id)
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("runc create: %v: %s", err, b)
	}
	if out, err := r.runtimeCmd(context.Background(), "start", id); err != nil {
		t.Fatalf("runc start: %v: %s", err, out)
	}
}

func TestCleanup(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)

	// A dead owner: a child that has exited.
	child := exec.Command("/bin/busybox", "sleep", "0.2")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := startTime(child.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	dead := owner{pid: child.Process.Pid, start: st}
	if err := child.Wait(); err != nil {
		t.Fatal(err)
	}
	// A reused pid: our own pid with another start time.
	reused := owner{pid: r.owner.pid, start: r.owner.start + 1}
	// A live owner: us.
	live := r.owner

	marker := fmt.Sprint(100000 + rand.IntN(900000))
	ids := map[string]string{
		"dead":   dead.containerID(1),
		"reused": reused.containerID(1),
		"live":   live.containerID(1 << 40),
	}
	for _, id := range ids {
		createContainer(t, r, rootfs, id, marker)
	}
	// A container lbuild did not create is left alone.
	createContainer(t, r, rootfs, "other-container", marker)
	defer func() {
		for _, id := range []string{ids["live"], "other-container"} {
			_ = r.delete(context.Background(), id)
			_ = unmountNetns(filepath.Join(r.bundles, id))
			_ = os.RemoveAll(filepath.Join(r.bundles, id))
		}
	}()
	// runc start returns before the container's init has exec'd sleep.
	for deadline := time.Now().Add(5 * time.Second); len(procsWithArg(marker)) < 4 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(procsWithArg(marker)); n != 4 {
		t.Fatalf("%d sleep processes, want 4", n)
	}

	if err := r.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	out, _ := r.runtimeCmd(context.Background(), "list", "--quiet")
	got := strings.Fields(string(out))
	slices.Sort(got)
	want := []string{ids["live"], "other-container"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("after Cleanup: containers %v, want %v", got, want)
	}
	ents, _ := os.ReadDir(r.bundles)
	var bundles []string
	for _, e := range ents {
		bundles = append(bundles, e.Name())
	}
	slices.Sort(bundles)
	if !slices.Equal(bundles, want) {
		t.Errorf("after Cleanup: bundles %v, want %v", bundles, want)
	}
	if n := len(procsWithArg(marker)); n != 2 {
		t.Errorf("%d sleep processes, want 2", n)
	}
	// The dead runs' stubs are gone; the live ones' are still mounted.
	for name, id := range ids {
		_, err := os.Lstat(filepath.Join(rootfs, "stub", id))
		if exists := err == nil; exists != (name == "live") {
			t.Errorf("%s: stub exists = %v", name, exists)
		}
	}

	for _, id := range want {
		if err := r.delete(context.Background(), id); err != nil {
			t.Error(err)
		}
	}
	if n := len(procsWithArg(marker)); n != 0 {
		t.Errorf("%d sleep processes left", n)
	}
	checkNoMounts(t, rootfs)
	// Only the live runs' network namespaces are still mounted.
	for _, id := range want {
		if err := unmountNetns(filepath.Join(r.bundles, id)); err != nil {
			t.Error(err)
		}
	}
	checkNoMounts(t, r.bundles)
}

func TestRunConcurrent(t *testing.T) {
	r := newRunc(t)
	var wg sync.WaitGroup
	for i := range 6 {
		rootfs := newRootfs(t)
		wg.Go(func() {
			out := mustRun(t, r, rootfs, Meta{Args: sh(fmt.Sprintf("echo %d; sleep 0.2", i)), Network: []string{"private", "host", "none"}[i%3]})
			if out != fmt.Sprintf("%d\n", i) {
				t.Errorf("run %d: %q", i, out)
			}
		})
	}
	wg.Wait()
}

func TestNewRuncNotFound(t *testing.T) {
	for _, rt := range []string{"/nonexistent/runc", "no-such-runtime-xyz"} {
		_, err := NewRunc(rt, t.TempDir())
		if !errors.Is(err, ErrRuntimeNotFound) {
			t.Errorf("%s: got %v, want ErrRuntimeNotFound", rt, err)
		}
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := NewRunc("", t.TempDir()); err != ErrRuntimeNotFound {
		t.Errorf("empty PATH: got %v", err)
	} else if !strings.Contains(err.Error(), "apt-get install runc") {
		t.Errorf("message %q", err)
	}
}

func TestContainerID(t *testing.T) {
	o := owner{pid: 42, start: 123456}
	id := o.containerID(7)
	if id != "lbuild-42-123456-7" {
		t.Fatal(id)
	}
	if got, ok := parseContainerID(id); !ok || got != o {
		t.Errorf("parse %q: %v %v", id, got, ok)
	}
	for _, bad := range []string{"lbuild-1-2", "other-1-2-3", "lbuild-a-2-3", "lbuild-0-2-3", "lbuild-1-2-3-4"} {
		if _, ok := parseContainerID(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
	me, err := self()
	if err != nil || !me.alive() || (owner{pid: me.pid, start: me.start + 1}).alive() {
		t.Errorf("self %v %v", me, err)
	}
}

func TestResolveInRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/lib", "real"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"lib":       "usr/lib",
		"abs":       "/usr/lib",
		"up":        "../../../real",
		"real/loop": "loop",
		"dangling":  "/nowhere/x",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	for in, want := range map[string]string{
		"/":                 "",
		"/usr/lib/x":        "usr/lib/x",
		"/lib/x/y":          "usr/lib/x/y",
		"/abs/x":            "usr/lib/x",
		"/up/x":             "real/x",
		"/../../usr/../etc": "etc",
		"/dangling/a":       "nowhere/x/a",
	} {
		got, err := resolveInRoot(root, in)
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := resolveInRoot(root, "/real/loop/x"); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("loop: %v", err)
	}
}

// BenchmarkRunTrue measures a RUN step on each network: private (the
// default) pays for a network namespace and its slirp4netns.
func BenchmarkRunTrue(b *testing.B) {
	r, rootfs := newRunc(b), newRootfs(b)
	for _, n := range []string{NetworkPrivate, NetworkHost, NetworkNone} {
		b.Run(n, func(b *testing.B) {
			for b.Loop() {
				if err := r.Run(context.Background(), rootfs, Meta{Args: []string{"true"}, Env: testEnv, Network: n}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A run whose owner's pid looks dead (as it does from another PID namespace
// sharing the store root) but whose run lock is held is left alone; once the
// lock is released, Cleanup removes it.
func TestCleanupHonoursRunLock(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	child := exec.Command("/bin/busybox", "true")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := startTime(child.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	child.Wait()
	id := owner{pid: child.Process.Pid, start: st}.containerID(7)
	marker := fmt.Sprint(100000 + rand.IntN(900000))
	// Another process holds the lock.
	lock := filepath.Join(r.bundles, id+".lock")
	holder := exec.Command("/usr/bin/flock", "-x", "-o", lock, "sleep", "30")
	if err := holder.Start(); err != nil {
		t.Skip("flock(1) not available:", err)
	}
	defer holder.Process.Kill()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if r.runAlive(id, owner{}) || time.Now().After(deadline) {
			break // held (or give up; the assertion below reports it)
		}
	}
	createContainer(t, r, rootfs, id, marker)
	defer r.delete(context.Background(), id)

	if err := r.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, _ := r.runtimeCmd(context.Background(), "list", "--quiet"); !strings.Contains(string(out), id) {
		t.Fatal("Cleanup removed a run whose lock is held")
	}
	holder.Process.Kill()
	holder.Wait()
	if err := r.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, _ := r.runtimeCmd(context.Background(), "list", "--quiet"); strings.Contains(string(out), id) {
		t.Error("Cleanup kept a run whose lock is free and whose owner is dead")
	}
}

// TestHelperRunProcess is a lbuild process for TestRunPrivateNetworkCrash:
// it runs a long RUN step on the private network until it is killed.
func TestHelperRunProcess(t *testing.T) {
	state, rootfs := os.Getenv("LBUILD_TEST_HELPER_STATE"), os.Getenv("LBUILD_TEST_HELPER_ROOTFS")
	if state == "" {
		t.Skip("helper process")
	}
	r, err := NewRunc("", state)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(context.Background(), rootfs, Meta{Args: sh("echo up; sleep " + os.Getenv("LBUILD_TEST_HELPER_MARKER")),
		Env: testEnv, Stdout: os.Stdout, Stderr: os.Stderr})
	t.Fatalf("run returned: %v", err)
}

// slirpProcs returns the pids of slirp4netns processes serving a network
// namespace under dir.
func slirpProcs(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) == slirpBin && strings.Contains(string(b), dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// When lbuild dies during a RUN on the private network, its slirp4netns
// exits with it, and Cleanup removes the container, the network
// namespace's mount and the bundle.
func TestRunPrivateNetworkCrash(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	state := filepath.Dir(r.root)
	marker := fmt.Sprint(100000 + rand.IntN(900000))
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperRunProcess$", "-test.count=1")
	helper.Env = append(os.Environ(), "LBUILD_TEST_HELPER_STATE="+state,
		"LBUILD_TEST_HELPER_ROOTFS="+rootfs, "LBUILD_TEST_HELPER_MARKER="+marker)
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "up\n" {
		t.Fatalf("helper: %q %v", line, err)
	}
	if n := len(slirpProcs(state)); n != 1 {
		t.Fatalf("%d slirp4netns processes during the run, want 1", n)
	}
	// "up" comes before the shell starts sleep: wait for the RUN process.
	for deadline := time.Now().Add(10 * time.Second); len(procsWithArg(marker)) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	helper.Process.Kill()
	helper.Wait()
	for deadline := time.Now().Add(10 * time.Second); len(slirpProcs(state)) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if pids := slirpProcs(state); len(pids) > 0 {
		t.Errorf("slirp4netns outlived its lbuild: %v", pids)
	}
	if n := len(procsWithArg(marker)); n != 1 {
		t.Fatalf("%d RUN processes after the crash, want 1", n)
	}
	if err := r.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(procsWithArg(marker)); n != 0 {
		t.Errorf("%d RUN processes after Cleanup", n)
	}
	checkNoMounts(t, state)
	if ents, _ := os.ReadDir(r.bundles); len(ents) != 0 {
		t.Errorf("bundles left: %v", ents)
	}
}

// Without slirp4netns the private network fails with what to do, leaving
// nothing behind; the host network needs no helper.
func TestRunPrivateNetworkWithoutSlirp(t *testing.T) {
	r, rootfs := newRunc(t), newRootfs(t)
	before := tree(t, rootfs)
	t.Setenv("PATH", t.TempDir())
	res := run(t, r, rootfs, Meta{Args: []string{"true"}})
	if !errors.Is(res.err, ErrSlirpNotFound) || !strings.Contains(res.err.Error(), "apt-get install slirp4netns") {
		t.Errorf("got %v, want ErrSlirpNotFound", res.err)
	}
	if after := tree(t, rootfs); !slices.Equal(before, after) {
		t.Errorf("rootfs changed:\nbefore %v\nafter  %v", before, after)
	}
	if ents, _ := os.ReadDir(r.bundles); len(ents) != 0 {
		t.Errorf("bundles left: %v", ents)
	}
	mustRun(t, r, rootfs, Meta{Args: []string{"true"}, Network: NetworkHost})
}
