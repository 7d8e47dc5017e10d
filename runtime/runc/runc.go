package runc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Runc runs each process with an OCI runtime CLI
// compatible with runc ("runc run"). Create it with NewRunc.
type Runc struct {
	runtime string // absolute path of the runtime binary
	root    string // runtime state (--root)
	bundles string // per-run bundles
	owner   owner  // this process, embedded in container IDs
	nofile  uint64 // RLIMIT_NOFILE for processes
}

// idCounter numbers runs within this process; package-wide so that two
// Runc values sharing a state dir still get distinct IDs.
var idCounter atomic.Uint64

// How long Run waits for the runtime after asking it to kill a cancelled
// container before killing the runtime process itself.
const (
	killRetry   = 100 * time.Millisecond
	killTimeout = 5 * time.Second
)

// NewRunc returns a Runc that uses the OCI runtime binary runtime:
// "" or "runc" looks up "runc" in PATH, a name without a slash is looked up
// in PATH, anything else is a path to the binary. The error wraps
// ErrRuntimeNotFound if the binary is missing.
//
// All state lives under stateDir, which is created if missing: the
// runtime's state in stateDir/runc (runc --root) and one bundle per run in
// stateDir/bundles/<id>. The two are links into a tmpfs where one can be
// used safely (see ensureStateDirs). Several processes may share a stateDir: container
// IDs embed the owning process (see Cleanup).
func NewRunc(runtime, stateDir string) (*Runc, error) {
	if runtime == "" {
		runtime = "runc"
	}
	var bin string
	if !strings.Contains(runtime, "/") {
		p, err := exec.LookPath(runtime)
		if err != nil {
			if runtime == "runc" {
				return nil, ErrRuntimeNotFound
			}
			return nil, fmt.Errorf("%s not found in PATH: %w", runtime, ErrRuntimeNotFound)
		}
		bin = p
	} else {
		fi, err := os.Stat(runtime)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("runtime %s does not exist: %w", runtime, ErrRuntimeNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("runtime %s: %w", runtime, err)
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("runtime %s is not an executable file", runtime)
		}
		bin = runtime
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	stateDir, err = filepath.Abs(stateDir)
	if err != nil {
		return nil, err
	}
	r := &Runc{
		runtime: bin,
		root:    filepath.Join(stateDir, "runc"),
		bundles: filepath.Join(stateDir, "bundles"),
		nofile:  nofileLimit(),
	}
	if err := ensureStateDirs(stateDir); err != nil {
		return nil, err
	}
	r.owner, err = self()
	if err != nil {
		return nil, fmt.Errorf("reading own process start time: %w", err)
	}
	return r, nil
}

// checkRun normalizes meta and returns rootfs as an absolute path, checking
// that it is a directory.
func checkRun(rootfs string, meta *Meta) (string, error) {
	if err := normalizeMeta(meta); err != nil {
		return "", err
	}
	rootfs, err := filepath.Abs(rootfs)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(rootfs); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	} else if !fi.IsDir() {
		return "", fmt.Errorf("rootfs %s is not a directory", rootfs)
	}
	return rootfs, nil
}

// Run runs meta.Args in rootfs and waits for it to exit.
//
// It returns nil for exit status 0, *ExitError for a non-zero exit,
// an error wrapping ctx.Err() when ctx is cancelled (after killing the
// container), and other errors for setup failures, including the
// runtime's own error message (e.g. "executable file not found").
//
// When Run returns, no process of the step is left, no runtime state
// remains, and the rootfs contains nothing the runtime created:
// mount-point stubs (for /proc, /sys, /dev, /etc/resolv.conf,
// /etc/hosts, /etc/hostname and each Mount's Destination) and their
// parent directories that did not exist before Run and are still empty
// (directories) or empty (regular files) afterwards are removed again.
// Anything the process created with content stays.
//
// Run is safe for concurrent use on different rootfs directories.
//
// It uses "runc run" in the foreground, the process's stdio passed
// straight through to it. On the private network (the default), the
// network namespace and its slirp4netns are made before and removed
// after: when Run returns, the namespace is unmounted and slirp4netns
// killed, though it may still be exiting (this process reaps it).
func (r *Runc) Run(ctx context.Context, rootfs string, meta Meta) (retErr error) {
	rootfs, err := checkRun(rootfs, &meta)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	id := r.owner.containerID(idCounter.Add(1))
	// The run's lock is held from before its bundle exists until after it is
	// gone: Cleanup takes a run for dead only if it can take this lock, which
	// works across PID namespaces sharing one store root.
	unlock, err := r.lockRun(id)
	if err != nil {
		return err
	}
	defer unlock()
	bundle := filepath.Join(r.bundles, id)
	if err := os.Mkdir(bundle, bundleMode); err != nil {
		return fmt.Errorf("creating bundle: %w", err)
	}
	defer func() {
		if err := os.RemoveAll(bundle); err != nil && retErr == nil {
			retErr = fmt.Errorf("removing bundle: %w", err)
		}
	}()

	var un *userNet
	if meta.Network == NetworkPrivate {
		// slirp4netns configures the network (a few ms) while the
		// bundle is written; the runtime starts once it is done.
		// Torn down after the runtime state is deleted, before the bundle.
		un, err = launchNet(bundle, meta.Ports)
		if err != nil {
			return fmt.Errorf("private network: %w", err)
		}
		defer func() {
			// A RUN step does not wait for slirp4netns to finish
			// exiting: about half of the private network's cost.
			if err := un.close(false); err != nil && retErr == nil {
				retErr = err
			}
		}()
	}
	if err := mkdirAllOwned(rootfs, meta.Cwd, meta.UID, meta.GID); err != nil {
		return fmt.Errorf("creating working directory: %w", err)
	}
	dests := append([]string{}, systemMountDests...)
	dests = append(dests, etcFiles...)
	for _, m := range meta.Mounts {
		dests = append(dests, m.Destination)
	}
	stubs, err := recordStubs(rootfs, dests)
	if err != nil {
		return fmt.Errorf("inspecting rootfs: %w", err)
	}
	// Runs last, after the runtime state is gone: no mount holds a stub.
	defer func() {
		if err := stubs.remove(); err != nil && retErr == nil {
			retErr = fmt.Errorf("removing mount stubs from rootfs: %w", err)
		}
	}()
	if err := writeBundle(bundle, rootfs, &meta, r.nofile, stubs); err != nil {
		return err
	}
	if un != nil {
		if err := un.wait(ctx); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("run %s: %w", meta.Args[0], ctx.Err())
			}
			return fmt.Errorf("private network: %w", err)
		}
	}

	logPath := filepath.Join(bundle, "runc.log")
	cmd := exec.Command(r.runtime, "--root", r.root, "--log", logPath, "--log-format", "json",
		"run", "--bundle", bundle, id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = meta.Stdin, meta.Stdout, meta.Stderr
	// Own process group: a terminal's ^C reaches lbuild, which cancels
	// ctx, instead of runc forwarding SIGINT into the container.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The container's processes die with its pid namespace; do not hang
	// on a pipe kept open by something unexpected.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", r.runtime, err)
	}
	// From here on, always delete the runtime state (even after a panic).
	defer func() {
		if err := r.deleteIfLeft(context.WithoutCancel(ctx), id); err != nil && retErr == nil {
			retErr = err
		}
	}()
	if un != nil {
		// First of all, so that slirp4netns exits while the runtime
		// state is deleted.
		defer un.kill()
	}

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var waitErr error
	select {
	case waitErr = <-done:
	case <-ctx.Done():
		r.kill(id, cmd, done)
		return fmt.Errorf("run %s: %w", meta.Args[0], ctx.Err())
	}
	if waitErr == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) {
		return fmt.Errorf("running %s: %w", r.runtime, waitErr)
	}
	if msg := runtimeError(logPath); msg != "" {
		return fmt.Errorf("%s: %s", filepath.Base(r.runtime), msg)
	}
	ws, _ := ee.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		// runc itself was killed: the process's status is unknown.
		return fmt.Errorf("%s killed by signal %v", filepath.Base(r.runtime), ws.Signal())
	}
	return &ExitError{Code: ee.ExitCode()}
}

// kill kills the container of a cancelled run and waits for "runc run" to
// return (done receives its Wait result). The container may not exist yet
// (runc is still creating it) or any more, so kill is retried until runc
// returns; runc itself is killed after killTimeout.
func (r *Runc) kill(id string, cmd *exec.Cmd, done <-chan error) {
	ctx := context.Background()
	deadline := time.NewTimer(killTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(killRetry)
	defer tick.Stop()
	for {
		if _, err := r.runtimeCmd(ctx, "kill", "--all", id, "KILL"); err != nil {
			// --all needs the cgroup; the pid namespace dies with
			// its init anyway.
			_, _ = r.runtimeCmd(ctx, "kill", id, "KILL")
		}
		select {
		case <-done:
			return
		case <-deadline.C:
			_ = cmd.Process.Kill()
			_, _ = r.runtimeCmd(ctx, "delete", "--force", id)
			<-done
			return
		case <-tick.C:
		}
	}
}

// delete removes the runtime state of id, killing what is left of it; a
// container that does not exist is not an error.
func (r *Runc) delete(ctx context.Context, id string) error {
	out, err := r.runtimeCmd(ctx, "delete", "--force", id)
	if err != nil && !notExist(out) {
		return fmt.Errorf("%s delete %s: %w: %s", filepath.Base(r.runtime), id, err, bytes.TrimSpace(out))
	}
	return nil
}

// deleteIfLeft deletes the runtime state of id, as delete does, if there
// is any. "runc run" (as crun's and youki's) removes a container's state
// dir, <root>/<id>, itself once the container's init has exited, so after a
// normal exit there is nothing to delete and the runtime invocation (a few
// milliseconds of every RUN step) is skipped; a runtime killed or failing
// before that leaves the dir, and "delete --force" kills what is left.
func (r *Runc) deleteIfLeft(ctx context.Context, id string) error {
	if _, err := os.Lstat(filepath.Join(r.root, id)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return r.delete(ctx, id)
}

// runtimeCmd runs the runtime with the state root and args and returns its
// combined output.
func (r *Runc) runtimeCmd(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.runtime, append([]string{"--root", r.root}, args...)...)
	cmd.WaitDelay = time.Second
	return cmd.CombinedOutput()
}

// notExist reports whether runtime output says the container does not
// exist (runc: "container does not exist"; crun: "No such file").
func notExist(out []byte) bool {
	s := strings.ToLower(string(out))
	return strings.Contains(s, "does not exist") || strings.Contains(s, "no such file")
}

// bundleMode is the mode of a bundle directory. Its config.json holds the
// process's environment, RUN secrets passed as variables included: only
// root may enter it. The runtime bind-mounts the /etc files as root, so
// the container's user needs no access to the bundle itself.
const bundleMode = 0o700

// writeBundle writes config.json, the generated /etc files, the content of
// "file" mounts and the stub record (for Cleanup) into bundle. config.json
// and the stub record are mode 0600; the /etc files 0644, as the
// container's user reads them through their bind mounts; file mounts have
// their own owner and mode.
func writeBundle(bundle, rootfs string, meta *Meta, nofile uint64, stubs *stubSet) error {
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading host resolv.conf: %w", err)
	}
	if meta.Network == NetworkPrivate {
		resolv = privateResolvConf(resolv)
	}
	files := map[string][]byte{
		"resolv.conf": resolv,
		"hosts":       []byte(hostsFile(meta.Hostname)),
		"hostname":    []byte(meta.Hostname + "\n"),
	}
	sp, err := generateSpec(rootfs, bundle, meta, nofile)
	if err != nil {
		return err
	}
	// Compact, as docker's and containerd's: indenting the seccomp profile
	// cost ~0.2 ms of every container start.
	spec, err := json.Marshal(sp)
	if err != nil {
		return err
	}
	files["config.json"] = spec
	rec, err := json.Marshal(stubs)
	if err != nil {
		return err
	}
	files[stubsFile] = rec
	for name, data := range files {
		mode := os.FileMode(0o600)
		if slices.Contains(etcFiles, "/etc/"+name) {
			mode = 0o644
		}
		if err := os.WriteFile(filepath.Join(bundle, name), data, mode); err != nil {
			return fmt.Errorf("writing bundle: %w", err)
		}
	}
	for i, m := range meta.Mounts {
		if m.Type == "file" {
			if err := writeFileMount(filepath.Join(bundle, fileMountName(i)), m); err != nil {
				return fmt.Errorf("file mount on %s: %w", m.Destination, err)
			}
		}
	}
	return nil
}

// writeFileMount writes the content of file mount m (normalized) to p,
// giving it m's owner and mode only once it is complete.
func writeFileMount(p string, m Mount) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(m.Data)
	if err == nil {
		err = f.Chown(int(m.UID), int(m.GID))
	}
	if err == nil {
		err = f.Chmod(m.Mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// stubsFile is the bundle file recording the rootfs stubs to remove.
const stubsFile = "lbuild-stubs.json"

// runtimeError returns the error messages runc logged (level error or
// fatal) to its JSON log, or "" if there are none: the process itself
// exited non-zero then.
func runtimeError(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	var msgs []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if e.Level == "error" || e.Level == "fatal" || e.Level == "panic" {
			msgs = append(msgs, e.Msg)
		}
	}
	return strings.Join(msgs, "; ")
}
