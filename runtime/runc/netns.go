package runc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The private network (Meta.Network "private"): the container gets a
// network namespace of its own, made by the driver before the runtime
// starts and bind-mounted on <bundle>/netns (the spec joins it by path), and
// slirp4netns gives it a user-mode network: tap0 10.0.2.100/24, the gateway
// 10.0.2.2, a DNS forwarder on 10.0.2.3, and lo up. Outbound connections
// leave through ordinary sockets of the slirp4netns process on the host;
// the host's loopback is not reachable (--disable-host-loopback), neither as
// 10.0.2.2 nor as 127.0.0.1, which is the container's own loopback.
//
// slirp4netns exits when the driver closes the write end of its exit pipe
// (--exit-fd), which the kernel also does when the driver's process dies,
// so a crash leaves no slirp4netns behind; only the bind mount stays, and
// Cleanup (or Delete, for containers) unmounts it before removing the
// bundle.

// slirpBin is the user-mode network helper.
const slirpBin = "slirp4netns"

// netnsFile is the bundle file the private network namespace is mounted on.
const netnsFile = "netns"

// slirpLog is the bundle file slirp4netns writes its output to.
const slirpLog = "slirp4netns.log"

// slirpDNS is the address of slirp4netns's DNS forwarder in the container.
const slirpDNS = "10.0.2.3"

// slirpReadyTimeout bounds the wait for slirp4netns to configure the
// network; it normally takes milliseconds, and exits on failure.
const slirpReadyTimeout = 30 * time.Second

// ErrSlirpNotFound is returned (wrapped) when the private network is asked
// for and slirp4netns is not installed.
var ErrSlirpNotFound = errors.New("slirp4netns not found in PATH: install it with apt-get install slirp4netns, or use --network host")

// userNet is a running private network: its namespace mounted on nsPath
// and the slirp4netns process serving it.
type userNet struct {
	nsPath string
	cmd    *exec.Cmd
	exitW  *os.File // closing it makes slirp4netns exit
	done   chan struct{}
	ready  chan error    // nil once configured, an error if it exited first
	ports  []PortMapping // published by wait
	apiDir string        // holds slirp4netns's API socket; removed by wait
}

// startNet makes a network namespace mounted on bundle/netns and starts
// slirp4netns on it; it returns once the network is configured and ports
// are published (through slirp4netns's API socket, which lives only until
// then). The caller must call close.
func startNet(ctx context.Context, bundle string, ports []PortMapping) (*userNet, error) {
	n, err := launchNet(bundle, ports)
	if err != nil {
		return nil, err
	}
	if err := n.wait(ctx); err != nil {
		n.close(true)
		return nil, err
	}
	return n, nil
}

// launchNet is startNet without the wait: it makes the namespace and starts
// slirp4netns, which configures the network while the caller goes on; wait
// returns once it is done. The caller must call close, and must not let the
// container's process run before wait returned nil.
func launchNet(bundle string, ports []PortMapping) (_ *userNet, retErr error) {
	bin, err := exec.LookPath(slirpBin)
	if err != nil {
		return nil, ErrSlirpNotFound
	}
	nsPath := filepath.Join(bundle, netnsFile)
	if err := newNetns(nsPath); err != nil {
		return nil, fmt.Errorf("creating network namespace: %w", err)
	}
	defer func() {
		if retErr != nil {
			unmountNetns(bundle)
		}
	}()
	log, err := os.OpenFile(filepath.Join(bundle, slirpLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", slirpBin, err)
	}
	defer log.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	exitR, exitW, err := os.Pipe()
	if err != nil {
		readyR.Close()
		readyW.Close()
		return nil, err
	}
	// fd 3 is the exit pipe, fd 4 the ready pipe (ExtraFiles order).
	args := []string{"--configure", "--mtu=65520", "--disable-host-loopback",
		"--enable-sandbox", "--enable-seccomp", "--exit-fd=3", "--ready-fd=4"}
	var apiDir string
	if len(ports) > 0 {
		// A socket path must fit in 108 bytes, which a bundle path
		// under a deep root may not: a short private directory.
		apiDir, err = os.MkdirTemp("", "lbuild-slirp-")
		if err != nil {
			readyR.Close()
			readyW.Close()
			exitR.Close()
			exitW.Close()
			return nil, fmt.Errorf("starting %s: %w", slirpBin, err)
		}
		args = append(args, "--api-socket="+filepath.Join(apiDir, "api.sock"))
	}
	args = append(args, "--netns-type=path", nsPath, "tap0")
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{exitR, readyW}
	err = cmd.Start()
	exitR.Close()
	readyW.Close()
	if err != nil {
		readyR.Close()
		exitW.Close()
		if apiDir != "" {
			os.RemoveAll(apiDir)
		}
		return nil, fmt.Errorf("starting %s: %w", slirpBin, err)
	}
	n := &userNet{nsPath: nsPath, cmd: cmd, exitW: exitW, done: make(chan struct{}),
		ready: make(chan error, 1), ports: ports, apiDir: apiDir}
	go func() {
		_ = cmd.Wait()
		close(n.done)
	}()
	go func() {
		defer readyR.Close()
		// slirp4netns writes "1" once configured; EOF means it exited.
		b := make([]byte, 1)
		_, err := readyR.Read(b)
		n.ready <- err
	}()
	return n, nil
}

// wait waits until slirp4netns has configured the network and publishes
// the ports; on error, the caller must still call close.
func (n *userNet) wait(ctx context.Context) error {
	if n.apiDir != "" {
		defer os.RemoveAll(n.apiDir)
	}
	timer := time.NewTimer(slirpReadyTimeout)
	defer timer.Stop()
	select {
	case err := <-n.ready:
		if err != nil {
			<-n.done
			out, _ := os.ReadFile(filepath.Join(filepath.Dir(n.nsPath), slirpLog))
			return fmt.Errorf("%s failed: %s", slirpBin, lastLine(out))
		}
	case <-timer.C:
		return fmt.Errorf("%s did not configure the network in %v", slirpBin, slirpReadyTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, p := range n.ports {
		if err := addHostfwd(filepath.Join(n.apiDir, "api.sock"), p); err != nil {
			return err
		}
	}
	return nil
}

// kill ends slirp4netns without waiting for it to exit, which takes tens of
// milliseconds (the kernel unregisters its tap device).
func (n *userNet) kill() {
	if n.exitW != nil {
		n.exitW.Close()
		n.exitW = nil
	}
	// slirp4netns notices the closed pipe only at its next poll timeout
	// and has nothing to save: kill it right away.
	_ = n.cmd.Process.Kill()
}

// stop ends slirp4netns and waits for it.
func (n *userNet) stop() {
	n.kill()
	<-n.done
}

// close ends slirp4netns and removes the network namespace. With wait, it
// returns once slirp4netns has exited; without, slirp4netns finishes
// exiting in the background (which takes tens of milliseconds: the kernel
// unregisters its tap device), reaped by this process.
func (n *userNet) close(wait bool) error {
	n.kill()
	if n.apiDir != "" {
		os.RemoveAll(n.apiDir)
	}
	if wait {
		<-n.done
	}
	return unmountNetns(filepath.Dir(n.nsPath))
}

// newNetns creates a network namespace and bind-mounts it on path (a new
// file), as "ip netns add" does: a thread of this process unshares its
// network namespace, the namespace is mounted from /proc, and the thread is
// thrown away (its goroutine ends locked), so no other goroutine ever runs
// in it.
func newNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread exits with this goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("mount %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// unmountNetns unmounts and removes bundle/netns if it exists; the network
// namespace goes away once nothing uses it any more.
func unmountNetns(bundle string) error {
	p := filepath.Join(bundle, netnsFile)
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount network namespace: %w", err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing network namespace: %w", err)
	}
	return nil
}

// privateResolvConf returns host (the host's resolv.conf) for a container
// on the private network: nameservers on the host's loopback (a local
// caching resolver such as systemd-resolved's 127.0.0.53), which the
// container cannot reach, are replaced by slirp4netns's DNS forwarder,
// which forwards to the host's resolver; so is an empty list. Other lines
// are kept.
func privateResolvConf(host []byte) []byte {
	var out bytes.Buffer
	servers, forwarder := 0, false
	for _, line := range strings.SplitAfter(string(host), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			ip, err := netip.ParseAddr(strings.SplitN(f[1], "%", 2)[0])
			if err == nil && ip.IsLoopback() {
				if forwarder {
					continue
				}
				forwarder = true
				line = "nameserver " + slirpDNS + "\n"
			}
			servers++
		}
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") && line != "" {
			out.WriteByte('\n')
		}
	}
	if servers == 0 {
		out.WriteString("nameserver " + slirpDNS + "\n")
	}
	return out.Bytes()
}

// lastLine returns the last non-empty line of out (a helper's error
// message), or "no output".
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		return l
	}
	return "no output"
}
