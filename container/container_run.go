package container

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/runtime/runc"
	"github.com/lbuild/lbuild/snapshot"
)

// initStubs are the mount points the runtime needs in every container's
// rootfs (see executor's systemMountDests and etcFiles).
var initStubs = []struct {
	path string
	dir  bool
}{
	{"dev", true},
	{"etc/hostname", false},
	{"etc/hosts", false},
	{"etc/resolv.conf", false},
	{"proc", true},
	{"sys", true},
}

// initLayer returns the committed snapshot to stack a container's layer on:
// the image chain plus a small layer holding the mount-point stubs the image
// lacks (none: the chain itself). Parent directories in it keep the image's
// mode, owner and mtime, so the container sees them unchanged. The layer is
// made once per image (its name derives from its bytes) and shared; which
// layer that is is remembered per chain (containers/.init/), so later
// containers of the image skip mounting a view of it to look.
func (r *Manager) initLayer(ctx context.Context, chain string) (string, error) {
	if chain == "" {
		return r.makeInitLayer(ctx, chain)
	}
	memo := filepath.Join(r.containersDir(), ".init", strings.TrimPrefix(chain, "sha256:"))
	if b, err := os.ReadFile(memo); err == nil {
		if name := string(b); name == chain || r.root.Snaps.Exists(name) {
			return name, nil
		}
	}
	name, err := r.makeInitLayer(ctx, chain)
	if err == nil {
		rememberInit(memo, name)
	}
	return name, err
}

// rememberInit records that chain's init layer is name (best effort: without
// the record the next container looks again).
func rememberInit(memo, name string) {
	if err := os.MkdirAll(filepath.Dir(memo), 0o700); err != nil {
		return
	}
	tmp := memo + ".tmp-" + randomHex(8)
	if err := os.WriteFile(tmp, []byte(name), 0o600); err != nil {
		return
	}
	if err := os.Rename(tmp, memo); err != nil {
		os.Remove(tmp)
	}
}

// makeInitLayer is initLayer without the record: it looks at the chain
// through a view and applies the stubs it lacks.
func (r *Manager) makeInitLayer(ctx context.Context, chain string) (string, error) {
	key := "init-view-" + randomHex(8)
	view, err := r.root.Snaps.View(ctx, key, chain)
	if err != nil {
		return "", err
	}
	defer r.root.Snaps.Remove(context.WithoutCancel(ctx), key)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	parents := map[string]bool{}
	n := 0
	for _, s := range initStubs {
		if _, err := os.Lstat(filepath.Join(view, s.path)); err == nil {
			continue
		}
		if dir, _ := filepath.Split(s.path); dir != "" && !parents[dir] {
			dir = strings.TrimSuffix(dir, "/")
			var st unix.Stat_t
			hdr := &tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}
			if err := unix.Lstat(filepath.Join(view, dir), &st); err == nil {
				if st.Mode&unix.S_IFMT != unix.S_IFDIR {
					continue // a symlink or a file: leave it to the runtime
				}
				hdr.Mode, hdr.Uid, hdr.Gid = int64(st.Mode&0o7777), int(st.Uid), int(st.Gid)
				hdr.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
			} else if !errors.Is(err, unix.ENOENT) {
				return "", err
			}
			parents[dir+"/"] = true
			if err := tw.WriteHeader(hdr); err != nil {
				return "", err
			}
		}
		hdr := &tar.Header{Name: s.path, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: epoch}
		if s.dir {
			hdr.Name, hdr.Typeflag, hdr.Mode = s.path+"/", tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return "", err
		}
		n++
	}
	if n == 0 {
		return chain, nil
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	sum := sha256.Sum256(buf.Bytes())
	name := snapshot.ChainID(chain, "sha256:"+hex.EncodeToString(sum[:]))
	if err := r.root.Snaps.Apply(ctx, name, chain, &buf); err != nil {
		return "", err
	}
	return name, nil
}

// Stdio is the standard input and output of a container's process. nil
// Stdin means /dev/null; nil Stdout or Stderr means the log only.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// StopTimeout is how long Stop waits after the stop signal before killing.
const StopTimeout = 10 * time.Second

// Run runs the process of a created container and waits for it,
// attached: its output goes to stdio and to the container's log. This
// process becomes the container's owner and records its exit. When ctx is
// cancelled (^C) the container is stopped as Stop does. It returns
// the process's exit status, or an error when the runtime could not start
// it (recorded as well). With AutoRemove the container is removed at the end.
func (r *Manager) Run(ctx context.Context, nameOrID string, stdio Stdio) (int, error) {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return -1, err
	}
	self, err := runc.Self()
	if err != nil {
		return -1, err
	}
	var stateErr error
	c, err = r.updateContainer(c.ID, func(s *Container) {
		if s.Status != StatusCreated {
			stateErr = fmt.Errorf("container %s has run already: lbuild run makes a new one", s.Name)
			return
		}
		s.Status, s.Owner, s.Started = StatusRunning, self, time.Now().UTC()
	})
	if err == nil {
		err = stateErr
	}
	if err != nil {
		return -1, err
	}
	code, runErr := r.serve(ctx, c, stdio)
	msg := ""
	if runErr != nil {
		msg = runErr.Error()
		if code < 0 {
			// As docker: 127 when the command was not found, else 126.
			code = 126
			if strings.Contains(msg, "no such file") || strings.Contains(msg, "not found") {
				code = 127
			}
		}
	}
	if c.AutoRemove {
		// Removed at once: the exit is recorded only if that fails (a
		// record written just to be deleted costs a synced write).
		err := r.removeContainer(context.WithoutCancel(ctx), c)
		if err == nil {
			return code, runErr
		}
		if runErr == nil {
			runErr = err
		}
	}
	r.updateContainer(c.ID, func(s *Container) {
		s.Status, s.ExitCode, s.Error, s.Finished = StatusExited, code, msg, time.Now().UTC()
	})
	return code, runErr
}

func (r *Manager) serve(ctx context.Context, c *Container, stdio Stdio) (int, error) {
	rt, err := r.runtime(c)
	if err != nil {
		return -1, err
	}
	log, err := os.OpenFile(c.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return -1, fmt.Errorf("open log: %w", err)
	}
	defer log.Close()
	var stdout, stderr io.Writer = log, log
	if stdio.Stdout != nil {
		stdout = io.MultiWriter(stdio.Stdout, log)
	}
	if stdio.Stderr != nil {
		stderr = io.MultiWriter(stdio.Stderr, log)
	}
	p, err := rt.Start(c.ID, stdio.Stdin, stdout, stderr)
	if err != nil {
		return -1, err
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		bg := context.WithoutCancel(ctx)
		rt.Signal(bg, c.ID, stopSignal(c.StopSignal), false)
		select {
		case <-p.Done():
		case <-time.After(StopTimeout):
			rt.Signal(bg, c.ID, syscall.SIGKILL, true)
		}
	}
	return p.Wait()
}

// stopSignal parses an image's STOPSIGNAL ("SIGTERM", "TERM", "15").
func stopSignal(s string) syscall.Signal {
	if s == "" {
		return syscall.SIGTERM
	}
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n)
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig
	}
	return syscall.SIGTERM
}

// StartDetached starts a created container's process in the background,
// under a shim: shim is the argv of a process that calls Run for
// the container (lbuild's own "__shim ID"), started in a new session so
// that it outlives the caller. It returns once the process runs, or with
// the runtime's error if it could not start.
func (r *Manager) StartDetached(ctx context.Context, nameOrID string, shim []string) error {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return err
	}
	if c.Status != StatusCreated {
		return fmt.Errorf("container %s has run already: lbuild run makes a new one", c.Name)
	}
	shimLog := filepath.Join(r.containerDir(c.ID), "shim.log")
	lf, err := os.OpenFile(shimLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(shim[0], shim[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start shim: %w", err)
	}
	shimDone := make(chan struct{})
	go func() { cmd.Wait(); close(shimDone) }()
	rt, err := r.runtime(c)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		cur, err := r.loadContainer(c.ID)
		if err != nil {
			if c.AutoRemove {
				return nil // ran and was removed already
			}
			return err
		}
		switch cur.Status {
		case StatusExited:
			if cur.Error != "" {
				return errors.New(cur.Error)
			}
			return nil
		case StatusRunning:
			if st, err := rt.State(ctx, c.ID); err == nil && st.Status == "running" {
				return nil
			}
		}
		select {
		case <-shimDone:
			if cur.Status == StatusCreated {
				b, _ := os.ReadFile(shimLog)
				return fmt.Errorf("container %s: shim exited: %s", c.Name, strings.TrimSpace(string(b)))
			}
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("container %s did not start within 30s", c.Name)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop sends a running container its stop signal (the image's
// STOPSIGNAL, default SIGTERM), waits up to timeout for it to exit, then
// kills every process in it. Stopping a container that does not run is not
// an error.
func (r *Manager) Stop(ctx context.Context, nameOrID string, timeout time.Duration) error {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return err
	}
	if !c.Running() {
		return nil
	}
	rt, err := r.runtime(c)
	if err != nil {
		return err
	}
	if err := rt.Signal(ctx, c.ID, stopSignal(c.StopSignal), false); err != nil && !errors.Is(err, runc.ErrNoContainer) {
		return err
	}
	if r.waitExited(ctx, c.ID, timeout) {
		return nil
	}
	if err := rt.Signal(ctx, c.ID, syscall.SIGKILL, true); err != nil && !errors.Is(err, runc.ErrNoContainer) {
		return err
	}
	if !r.waitExited(ctx, c.ID, 5*time.Second) {
		return fmt.Errorf("container %s did not stop", c.Name)
	}
	return nil
}

// ExecOptions describe a process to run in a running container.
type ExecOptions struct {
	Args []string
	// Env adds KEY=VALUE to the container's environment.
	Env []string
	// User and Workdir default to the container's.
	User, Workdir string
	Stdio
}

// Exec runs opts.Args in a running container and waits for it. A
// non-zero exit is an *runc.ExitError.
func (r *Manager) Exec(ctx context.Context, nameOrID string, opts ExecOptions) error {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return err
	}
	if !c.Running() {
		return fmt.Errorf("container %s is not running", c.Name)
	}
	if len(opts.Args) == 0 {
		return errors.New("exec: no command given")
	}
	rt, err := r.runtime(c)
	if err != nil {
		return err
	}
	meta := runc.Meta{Args: opts.Args, Env: mergeEnv(c.Env, opts.Env), Cwd: c.Cwd,
		Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr}
	if opts.Workdir != "" {
		meta.Cwd = opts.Workdir
	}
	user := c.User
	if opts.User != "" {
		user = opts.User
	}
	if user != "" {
		if meta.UID, meta.GID, err = imagecfg.ResolveUser(c.Rootfs, user, false); err != nil {
			return fmt.Errorf("user %s: %w", user, err)
		}
		meta.AdditionalGids = imagecfg.SupplementaryGroups(c.Rootfs, user)
	}
	return rt.Exec(ctx, c.ID, meta)
}

// Logs copies a container's log (its stdout and stderr) to w. With
// follow it keeps copying until the container is no longer running or ctx
// ends.
func (r *Manager) Logs(ctx context.Context, nameOrID string, w io.Writer, follow bool) error {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return err
	}
	f, err := os.Open(c.LogPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		cur, err := r.Get(ctx, c.ID)
		if err != nil || !cur.Running() {
			_, err := io.Copy(w, f)
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ExitError reports a container process that exited non-zero.
type ExitError = runc.ExitError
