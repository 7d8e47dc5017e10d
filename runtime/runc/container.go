package runc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Containers: long-lived runtime containers with fixed IDs, as opposed to
// Run's one-shot RUN steps. A container's lifecycle is
//
//	Create (bundle only) -> Start (runc run, attached to the caller) ->
//	[Signal, Exec, State while it runs] -> Wait returns -> Delete
//
// Their runtime IDs are ContainerID(id), which Cleanup never touches (it
// only parses the lbuild-<pid>-<start>-<n> IDs of RUN steps). Unlike Run,
// the driver leaves the rootfs alone afterwards: a container's mount-point
// stubs belong in the layer below it (the caller's init layer), and
// directories created for Cwd or a Mount stay, as in docker.

// ContainerRuntime is the container lifecycle of a runtime.
type ContainerRuntime interface {
	// Create writes the bundle of container id (which must not exist)
	// for meta, running in rootfs. meta's stdio fields are ignored: Start
	// takes the stdio.
	Create(id, rootfs string, meta Meta) error
	// Start starts the container's process with "runc run", attached:
	// the returned Proc's Wait reports its exit. stdin nil means
	// /dev/null; *os.File values are passed straight through. On the
	// private network, the network lives from Start until the process
	// exits, served by the process that called Start: when Wait returns,
	// its slirp4netns is killed and its namespace unmounted, though
	// slirp4netns may still be exiting (the caller's process reaps it).
	Start(id string, stdin io.Reader, stdout, stderr io.Writer) (*Proc, error)
	// State returns the runtime state of container id; ErrNoContainer
	// (wrapped) if the runtime does not know it.
	State(ctx context.Context, id string) (State, error)
	// Signal sends sig to the container's init process (all processes
	// with all).
	Signal(ctx context.Context, id string, sig syscall.Signal, all bool) error
	// Pause freezes all processes of the running container id (its
	// cgroup's freezer); Resume thaws them. A container is paused while
	// its layer is committed, so that it cannot change the layer, or
	// race the reader, meanwhile.
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	// Exec runs meta.Args in the running container id and waits for it:
	// nil for exit 0, *ExitError otherwise. meta.Mounts, Network,
	// Hostname and ReadonlyRootfs are ignored (the container's apply).
	Exec(ctx context.Context, id string, meta Meta) error
	// Delete removes the runtime state of container id (killing what is
	// left of it) and its bundle. Deleting an unknown container is not an
	// error.
	Delete(ctx context.Context, id string) error
}

var _ ContainerRuntime = (*Runc)(nil)

// ctrPrefix starts runtime IDs of containers; parseContainerID refuses it.
const ctrPrefix = idPrefix + "ctr-"

// ContainerID returns the runtime ID of the lbuild container id.
func ContainerID(id string) string { return ctrPrefix + id }

// ErrNoContainer is returned (wrapped) for a container the runtime does not
// know.
var ErrNoContainer = errors.New("no such runtime container")

// State is the runtime's view of a container ("runc state").
type State struct {
	// Status is "creating", "created", "running", "paused" or "stopped".
	Status string `json:"status"`
	// Pid is the host pid of the container's init process (0 if none).
	Pid int `json:"pid"`
}

func (r *Runc) ctrBundle(id string) string { return filepath.Join(r.bundles, ContainerID(id)) }

func (r *Runc) Create(id, rootfs string, meta Meta) error {
	if id == "" || strings.ContainsAny(id, "/-") {
		return fmt.Errorf("invalid container id %q", id)
	}
	rootfs, err := checkRun(rootfs, &meta)
	if err != nil {
		return err
	}
	if err := mkdirAllOwned(rootfs, meta.Cwd, meta.UID, meta.GID); err != nil {
		return fmt.Errorf("creating working directory: %w", err)
	}
	meta.Stdin, meta.Stdout, meta.Stderr = nil, nil, nil
	bundle := r.ctrBundle(id)
	if err := os.Mkdir(bundle, bundleMode); err != nil {
		return fmt.Errorf("creating bundle: %w", err)
	}
	if err := writeBundle(bundle, rootfs, &meta, r.nofile, &stubSet{Rootfs: rootfs}); err != nil {
		os.RemoveAll(bundle)
		return err
	}
	// Kept for Exec: the process settings of the container.
	b, err := json.Marshal(meta)
	if err == nil {
		err = os.WriteFile(filepath.Join(bundle, metaFile), b, 0o600)
	}
	if err != nil {
		os.RemoveAll(bundle)
		return fmt.Errorf("writing bundle: %w", err)
	}
	return nil
}

// metaFile keeps a container's Meta in its bundle.
const metaFile = "lbuild-meta.json"

// Proc is a container process started by Start.
type Proc struct {
	cmd  *exec.Cmd
	net  *userNet // the private network, torn down after cmd exits
	log  string
	rt   string
	done chan struct{}
	code int
	err  error
}

func (r *Runc) Start(id string, stdin io.Reader, stdout, stderr io.Writer) (*Proc, error) {
	bundle := r.ctrBundle(id)
	if _, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil {
		return nil, fmt.Errorf("container %s has no bundle: %w", id, err)
	}
	var meta Meta
	if b, err := os.ReadFile(filepath.Join(bundle, metaFile)); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	} else if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("container %s: reading bundle: %w", id, err)
	}
	var un *userNet
	if meta.Network == NetworkPrivate {
		// A namespace left by an earlier start whose owner died.
		if err := unmountNetns(bundle); err != nil {
			return nil, err
		}
		var err error
		if un, err = startNet(context.Background(), bundle, meta.Ports); err != nil {
			return nil, fmt.Errorf("private network: %w", err)
		}
	}
	logPath := filepath.Join(bundle, "runc.log")
	os.Remove(logPath)
	cmd := exec.Command(r.runtime, "--root", r.root, "--log", logPath, "--log-format", "json",
		"run", "--bundle", bundle, ContainerID(id))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	// Own process group: a terminal's ^C reaches lbuild, which decides
	// how to stop the container.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		if un != nil {
			un.close(true)
		}
		return nil, fmt.Errorf("starting %s: %w", r.runtime, err)
	}
	p := &Proc{cmd: cmd, net: un, log: logPath, rt: filepath.Base(r.runtime), done: make(chan struct{})}
	go func() {
		p.code, p.err = p.wait()
		close(p.done)
	}()
	return p, nil
}

func (p *Proc) wait() (int, error) {
	err := p.cmd.Wait()
	if p.net != nil {
		// The container is gone with its init (its pid namespace).
		// Not waiting for slirp4netns to finish exiting (the kernel
		// unregisters its tap device) saves ~20 ms of "lbuild run".
		if nerr := p.net.close(false); nerr != nil && err == nil {
			return 0, nerr
		}
	}
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return -1, fmt.Errorf("running %s: %w", p.rt, err)
	}
	if msg := runtimeError(p.log); msg != "" {
		return -1, fmt.Errorf("%s: %s", p.rt, msg)
	}
	if ws, _ := ee.Sys().(syscall.WaitStatus); ws.Signaled() {
		return -1, fmt.Errorf("%s killed by signal %v", p.rt, ws.Signal())
	}
	return ee.ExitCode(), nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process and returns its exit status (128+signal when
// killed by a signal), or an error if the runtime failed (the process never
// ran, e.g. "executable file not found") or was killed itself.
func (p *Proc) Wait() (int, error) {
	<-p.done
	return p.code, p.err
}

// Pid is the pid of the runtime process (not the container's).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

func (r *Runc) State(ctx context.Context, id string) (State, error) {
	out, err := r.runtimeCmdOut(ctx, "state", ContainerID(id))
	if err != nil {
		if notExist(out) {
			return State{}, fmt.Errorf("container %s: %w", id, ErrNoContainer)
		}
		return State{}, fmt.Errorf("%s state: %w: %s", filepath.Base(r.runtime), err, bytes.TrimSpace(out))
	}
	var st State
	if err := json.Unmarshal(out, &st); err != nil {
		return State{}, fmt.Errorf("%s state: %w", filepath.Base(r.runtime), err)
	}
	return st, nil
}

func (r *Runc) Signal(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	args = append(args, ContainerID(id), fmt.Sprint(int(sig)))
	out, err := r.runtimeCmd(ctx, args...)
	if err != nil {
		if notExist(out) {
			return fmt.Errorf("container %s: %w", id, ErrNoContainer)
		}
		return fmt.Errorf("%s kill: %w: %s", filepath.Base(r.runtime), err, bytes.TrimSpace(out))
	}
	return nil
}

func (r *Runc) Pause(ctx context.Context, id string) error { return r.freeze(ctx, "pause", id) }

func (r *Runc) Resume(ctx context.Context, id string) error { return r.freeze(ctx, "resume", id) }

func (r *Runc) freeze(ctx context.Context, verb, id string) error {
	out, err := r.runtimeCmd(ctx, verb, ContainerID(id))
	if err != nil {
		if notExist(out) {
			return fmt.Errorf("container %s: %w", id, ErrNoContainer)
		}
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(r.runtime), verb, err, bytes.TrimSpace(out))
	}
	return nil
}

func (r *Runc) Exec(ctx context.Context, id string, meta Meta) error {
	bundle := r.ctrBundle(id)
	b, err := os.ReadFile(filepath.Join(bundle, metaFile))
	if err != nil {
		return fmt.Errorf("container %s: %w", id, ErrNoContainer)
	}
	var cm Meta
	if err := json.Unmarshal(b, &cm); err != nil {
		return fmt.Errorf("container %s: reading bundle: %w", id, err)
	}
	meta.Mounts, meta.Network, meta.Hostname = nil, cm.Network, cm.Hostname
	if err := normalizeMeta(&meta); err != nil {
		return err
	}
	spec, err := generateSpec("/", bundle, &meta, r.nofile)
	if err != nil {
		return err
	}
	pb, err := json.Marshal(spec.Process)
	if err != nil {
		return err
	}
	pf, err := os.CreateTemp(bundle, "exec-*.json")
	if err != nil {
		return fmt.Errorf("writing process: %w", err)
	}
	defer os.Remove(pf.Name())
	if _, err := pf.Write(pb); err != nil {
		pf.Close()
		return fmt.Errorf("writing process: %w", err)
	}
	pf.Close()
	logPath := pf.Name() + ".log"
	defer os.Remove(logPath)
	cmd := exec.Command(r.runtime, "--root", r.root, "--log", logPath, "--log-format", "json",
		"exec", "--process", pf.Name(), ContainerID(id))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = meta.Stdin, meta.Stdout, meta.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", r.runtime, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		// runc exec forwards the signal to the process.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(killTimeout):
			_ = cmd.Process.Kill()
			<-done
		}
		return fmt.Errorf("exec %s: %w", meta.Args[0], ctx.Err())
	}
	if werr == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) {
		return fmt.Errorf("running %s: %w", r.runtime, werr)
	}
	if msg := runtimeError(logPath); msg != "" {
		return fmt.Errorf("%s: %s", filepath.Base(r.runtime), msg)
	}
	return &ExitError{Code: ee.ExitCode()}
}

func (r *Runc) Delete(ctx context.Context, id string) error {
	// runc (as crun and youki) keeps a container's state in <root>/<id>
	// from create until delete, and "runc run" removes it once the
	// container's init has exited: without it nothing is left to kill or
	// delete, and the two runtime invocations (~10 ms each) are skipped.
	if _, err := os.Lstat(filepath.Join(r.root, ContainerID(id))); err == nil || !errors.Is(err, fs.ErrNotExist) {
		_, _ = r.runtimeCmd(ctx, "kill", "--all", ContainerID(id), "KILL")
		if err := r.delete(ctx, ContainerID(id)); err != nil {
			return err
		}
	}
	if err := unmountNetns(r.ctrBundle(id)); err != nil {
		return err
	}
	if err := os.RemoveAll(r.ctrBundle(id)); err != nil {
		return fmt.Errorf("removing bundle: %w", err)
	}
	return nil
}

// runtimeCmdOut is runtimeCmd returning stdout only on success (stderr on
// failure).
func (r *Runc) runtimeCmdOut(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.runtime, append([]string{"--root", r.root}, args...)...)
	cmd.WaitDelay = time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return stderr.Bytes(), err
	}
	return out, nil
}

// Owner identifies a process across pid reuse: its pid and its start time.
// Containers record the process that waits for them (lbuild in the
// foreground, or its shim).
type Owner struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// Self returns the Owner of this process.
func Self() (Owner, error) {
	o, err := self()
	return Owner{Pid: o.pid, Start: o.start}, err
}

// Alive reports whether the process still runs (same pid, same start time).
// The zero Owner is not alive.
func (o Owner) Alive() bool {
	return o.Pid > 0 && owner{pid: o.Pid, start: o.Start}.alive()
}
