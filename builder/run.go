package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/lbuild/lbuild/internal/fsx"
	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/internal/rootpath"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	bkparser "github.com/moby/buildkit/frontend/dockerfile/parser"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/builder/executor"
	"github.com/lbuild/lbuild/cache"
)

// executorFactory makes the RUN executor once per build, on first use, so a
// build without RUN never needs runc.
type executorFactory struct {
	once sync.Once
	ex   executor.Executor
	err  error
}

func (b *build) executor() (executor.Executor, error) {
	b.exec.once.Do(func() {
		if b.opts.Executor != nil {
			b.exec.ex = b.opts.Executor
			return
		}
		ex, err := executor.New(context.Background(), b.opts.Runtime, b.root.RunDir())
		if errors.Is(err, executor.ErrRuntimeNotFound) {
			err = fmt.Errorf("RUN needs an OCI runtime: %w", err)
		}
		b.exec.ex, b.exec.err = ex, err
	})
	return b.exec.ex, b.exec.err
}

// runArgs turns a RUN's command line into argv: shell form through SHELL
// (default /bin/sh -c), exec form as given, heredocs as BuildKit runs them (a
// lone heredoc with a shebang becomes a script file; a lone heredoc without
// one runs in the shell; anything else is handed to the shell whole).
func (st *stageState) runArgs(c *instructions.RunCommand) (args []string, script *instructions.ShellInlineFile, err error) {
	args = c.CmdLine
	if len(c.Files) > 0 {
		if len(args) != 1 || !c.PrependShell {
			return nil, nil, fmt.Errorf("invalid heredoc RUN: %v", args)
		}
		if hd := bkparser.MustParseHeredoc(args[0]); hd != nil {
			f := c.Files[0]
			data := f.Data
			if f.Chomp {
				data = bkparser.ChompHeredocContent(data)
			}
			if strings.HasPrefix(data, "#!") {
				f.Data = data
				script = &f
				args = []string{path.Join("/dev/pipes", f.Name)}
			} else {
				args = []string{data}
			}
		} else {
			var sb strings.Builder
			sb.WriteString(args[0])
			for _, f := range c.Files {
				sb.WriteString("\n" + f.Data + f.Name)
			}
			args = []string{sb.String()}
		}
	}
	return st.withShell(args, c.PrependShell), script, nil
}

// runMount is a RUN --mount resolved for the cache key and for execution.
type runMount struct {
	m   *instructions.Mount
	key string // what of it goes into the cache key
	// prepare returns the executor mount, and a release function.
	prepare func(ctx context.Context, uid, gid uint32) (executor.Mount, func(), error)
}

func (b *build) dispatchRun(ctx context.Context, st *stageState, c *instructions.RunCommand) error {
	args, script, err := st.runArgs(c)
	if err != nil {
		return err
	}
	network := b.opts.Network
	// "default" is the build's network (private unless --network says
	// otherwise), as in BuildKit.
	switch n := instructions.GetNetwork(c); n {
	case "", "default":
	case executor.NetworkNone, executor.NetworkHost:
		network = n
	default:
		return fmt.Errorf("RUN --network=%s is not supported: use default, none or host", n)
	}
	// BuildKit runs such a step privileged, and only when the build allows
	// the security.insecure entitlement; lbuild has no privileged steps.
	if instructions.GetSecurity(c) == instructions.SecurityInsecure {
		return fmt.Errorf("RUN --security=insecure is not supported: every RUN runs with Docker's default capabilities and seccomp profile")
	}
	var mounts []runMount
	lockedIDs := map[string]bool{}
	for _, m := range instructions.GetMounts(c) {
		// A locked cache mount twice in one RUN would wait for itself.
		if m.Type == instructions.MountTypeCache && m.CacheSharing == instructions.MountSharingLocked {
			id := m.CacheID
			if id == "" {
				id = m.Target
			}
			if lockedIDs[id] {
				return fmt.Errorf("RUN mounts cache %q twice with sharing=locked: mount it once, or use sharing=shared", id)
			}
			lockedIDs[id] = true
		}
		rm, err := b.runMount(ctx, m)
		if err != nil {
			return err
		}
		if rm != nil {
			mounts = append(mounts, *rm)
		}
	}
	env := st.runEnv()
	text := "RUN " + strings.Join(args, " ")
	argv, _ := json.Marshal(args)
	in := cache.Inputs{Instruction: "RUN " + string(argv), Env: env, Workdir: st.cfg.Config.WorkingDir,
		User: st.cfg.Config.User, Network: network}
	if script != nil {
		in.Script = script.Data
	}
	for _, m := range mounts {
		in.Mounts = append(in.Mounts, m.key)
	}
	cwd := st.cfg.Config.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	user := st.cfg.Config.User
	return b.step(ctx, st, text, in, func(ctx context.Context, root string) error {
		ex, err := b.executor()
		if err != nil {
			return err
		}
		uid, gid := uint32(0), uint32(0)
		var groups []uint32
		if user != "" {
			if uid, gid, err = imagecfg.ResolveUser(root, user, false); err != nil {
				return fmt.Errorf("USER %s: %w", user, err)
			}
			groups = imagecfg.SupplementaryGroups(root, user)
		}
		meta := executor.Meta{Args: args, Env: append(env, b.proxyEnv(env)...), Cwd: cwd, UID: uid, GID: gid, AdditionalGids: groups, Network: network}
		for _, m := range mounts {
			em, release, err := m.prepare(ctx, uid, gid)
			if err != nil {
				return err
			}
			defer release()
			if em.Type == "secret-env" {
				meta.Env = append(meta.Env, em.Destination+"="+em.Source)
				continue
			}
			meta.Mounts = append(meta.Mounts, em)
		}
		if script != nil {
			dir, err := os.MkdirTemp(b.root.RunDir(), "heredoc-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			p := filepath.Join(dir, script.Name)
			if err := os.WriteFile(p, []byte(script.Data), 0o755); err != nil {
				return err
			}
			meta.Mounts = append(meta.Mounts, executor.Mount{Type: "bind", Source: p, Destination: args[len(args)-1], Options: []string{"ro"}})
		}
		out := &lineWriter{emit: func(line string) { b.prog.Log(st.stepID, line) }}
		meta.Stdout, meta.Stderr = out, out
		err = ex.Run(ctx, root, meta)
		out.flush()
		var ee *executor.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("RUN %s: exit code %d%s", strings.Join(args, " "), ee.Code, out.tailText())
		}
		return err
	})
}

// proxyNames are BuildKit's predefined proxy ARGs.
var proxyNames = []string{"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"}

// proxyEnv is what a RUN gets of the proxy --build-args without an ARG line,
// as BuildKit's llb.ProxyEnv: each given value (either spelling) as both
// FOO_PROXY and foo_proxy, unless env already sets that name (a declared
// ARG). It is no part of the step's cache key and never reaches the image or
// its history.
func (b *build) proxyEnv(env []string) []string {
	var out []string
	for _, n := range proxyNames {
		v, ok := b.opts.BuildArgs[n]
		if lv, lok := b.opts.BuildArgs[strings.ToLower(n)]; lok {
			v, ok = lv, true // BuildKit reads the args in sorted order: lower case last
		}
		if !ok || v == "" {
			continue
		}
		for _, k := range []string{n, strings.ToLower(n)} {
			if _, set := imagecfg.LookupEnv(env, k); !set {
				out = append(out, k+"="+v)
			}
		}
	}
	return out
}

// runMount resolves one RUN --mount. Cache mounts live in the store root and
// never in a layer; bind mounts come from the context or a stage, read-only
// unless rw (then a private copy); secrets are read-only files (or
// variables) whose content never reaches a key, a layer or the history and
// lives, for the step's duration only, in its runtime bundle.
func (b *build) runMount(ctx context.Context, m *instructions.Mount) (*runMount, error) {
	target := m.Target
	if m.Type == instructions.MountTypeSecret {
		id := m.CacheID
		if id == "" {
			id = path.Base(target)
		}
		if target == "" && m.Env == nil {
			target = "/run/secrets/" + id
		}
		m.CacheID, m.Target = id, target
		if target == "" {
			target = "/" // env-only secret: no file is mounted
		}
	}
	if !path.IsAbs(target) {
		return nil, fmt.Errorf("--mount target %q must be an absolute path", target)
	}
	switch m.Type {
	case instructions.MountTypeCache:
		id := m.CacheID
		if id == "" {
			id = target
		}
		sharing := string(m.CacheSharing)
		if sharing == "" {
			sharing = "shared"
		}
		sum := sha256.Sum256([]byte(id))
		dir := filepath.Join(b.root.CacheMountDir(), hex.EncodeToString(sum[:16]))
		mode := os.FileMode(0o755)
		if m.Mode != nil {
			mode = os.FileMode(*m.Mode)
		}
		return &runMount{m: m, key: fmt.Sprintf("cache,target=%s,id=%s,sharing=%s,ro=%v", target, id, sharing, m.ReadOnly),
			prepare: func(ctx context.Context, uid, gid uint32) (executor.Mount, func(), error) {
				if err := os.MkdirAll(b.root.CacheMountDir(), 0o700); err != nil {
					return executor.Mount{}, nil, err
				}
				if err := os.Mkdir(dir, mode); err == nil {
					u, g := uint32(0), uint32(0)
					if m.UID != nil {
						u = uint32(*m.UID)
					}
					if m.GID != nil {
						g = uint32(*m.GID)
					}
					os.Chown(dir, int(u), int(g))
					os.Chmod(dir, mode)
					if b.opts.CacheFrom != nil {
						if err := b.opts.CacheFrom.SeedMount(ctx, id, dir); err != nil {
							return executor.Mount{}, nil, fmt.Errorf("cache mount %s from --cache-from: %w", id, err)
						}
					}
				} else if !os.IsExist(err) {
					return executor.Mount{}, nil, err
				}
				b.noteMount(id, dir)
				release := func() {}
				src := dir
				switch sharing {
				case "locked", "private":
					how := unix.LOCK_EX
					if sharing == "private" {
						how |= unix.LOCK_NB
					}
					lf, err := fsx.Lock(dir+".lock", how)
					if err != nil && !errors.Is(err, fsx.ErrLocked) {
						return executor.Mount{}, nil, err
					}
					if err != nil {
						// private: another build holds it; use a fresh directory of our own.
						tmp, err := os.MkdirTemp(b.root.CacheMountDir(), "private-")
						if err != nil {
							return executor.Mount{}, nil, err
						}
						src = tmp
						release = func() { os.RemoveAll(tmp) }
						break
					}
					release = func() { lf.Close() }
				}
				opts := []string{"rbind"}
				if m.ReadOnly {
					opts = append(opts, "ro")
				}
				return executor.Mount{Type: "bind", Source: src, Destination: target, Options: opts}, release, nil
			}}, nil
	case instructions.MountTypeTmpfs:
		opts := []string{"nosuid", "nodev"}
		if m.SizeLimit > 0 {
			opts = append(opts, "size="+strconv.FormatInt(m.SizeLimit, 10))
		}
		return &runMount{m: m, key: "tmpfs,target=" + target, prepare: func(context.Context, uint32, uint32) (executor.Mount, func(), error) {
			return executor.Mount{Type: "tmpfs", Source: "tmpfs", Destination: target, Options: opts}, func() {}, nil
		}}, nil
	case instructions.MountTypeSecret:
		id := m.CacheID
		src, ok := b.opts.Secrets[id]
		if !ok {
			if m.Required {
				return nil, fmt.Errorf("secret %q is required: pass it with --secret id=%s,src=FILE", id, id)
			}
			return nil, nil
		}
		envName := ""
		if m.Env != nil {
			envName = *m.Env
		}
		// The key holds the secret's id and where it goes, and its owner and
		// mode when given: never its content.
		key := fmt.Sprintf("secret,id=%s,target=%s,env=%s", id, m.Target, envName)
		if m.UID != nil {
			key += fmt.Sprintf(",uid=%d", *m.UID)
		}
		if m.GID != nil {
			key += fmt.Sprintf(",gid=%d", *m.GID)
		}
		if m.Mode != nil {
			key += fmt.Sprintf(",mode=%o", *m.Mode)
		}
		return &runMount{m: m, key: key,
			prepare: func(context.Context, uint32, uint32) (executor.Mount, func(), error) {
				if envName != "" && m.Target == "" {
					data, err := os.ReadFile(src)
					if err != nil {
						return executor.Mount{}, nil, fmt.Errorf("secret %s: %w", id, err)
					}
					return executor.Mount{Type: "secret-env", Source: string(data), Destination: envName}, func() {}, nil
				}
				// As BuildKit: a read-only file owned by uid:gid (default
				// root) with mode (default 0400), not the host file itself.
				// Its only copy lives in the step's runtime bundle.
				data, err := os.ReadFile(src)
				if err != nil {
					return executor.Mount{}, nil, fmt.Errorf("secret %s: %w", id, err)
				}
				fm := executor.Mount{Type: "file", Destination: target, Data: data, Mode: 0o400}
				if m.Mode != nil {
					fm.Mode = os.FileMode(*m.Mode) & os.ModePerm
				}
				if m.UID != nil {
					fm.UID = uint32(*m.UID)
				}
				if m.GID != nil {
					fm.GID = uint32(*m.GID)
				}
				return fm, func() {}, nil
			}}, nil
	case instructions.MountTypeBind:
		return b.bindMount(ctx, m)
	}
	return nil, fmt.Errorf("RUN --mount=type=%s is not supported: use cache, bind, tmpfs or secret", m.Type)
}

// bindMount resolves --mount=type=bind from the context (keyed by content)
// or from a stage or image (keyed by its ID). A context source is selected
// as a COPY source is (selectSources): .dockerignore applies wherever a
// symlink leads, and a directory with ignored content below it is mounted as
// a copy of what is left in.
func (b *build) bindMount(ctx context.Context, m *instructions.Mount) (*runMount, error) {
	src := m.Source
	if src == "" {
		src = "/"
	}
	rw := !m.ReadOnly
	var key string
	var getPath func(ctx context.Context) (string, func(), error) // the host path to mount
	var filtered []group
	if m.From == "" {
		groups, err := selectSources(b.ctxDir, b.ignore, nil, []string{src}, true)
		if err != nil {
			return nil, fmt.Errorf("--mount: %w", err)
		}
		if len(groups) != 1 {
			return nil, fmt.Errorf("--mount source %q: matches %d paths in the build context: name one file or directory", src, len(groups))
		}
		// What is mounted is where the source resolved to when it was
		// checked against .dockerignore, not the path resolved again.
		resolved := groups[0].abs
		var all []cache.Entry
		for _, g := range groups {
			all = append(all, g.entries...)
			if g.pruned && g.dir {
				// .dockerignore leaves something out below the source: the
				// step sees a copy of what is selected, as the key says.
				filtered = groups
			}
		}
		sum, err := cache.Checksum(b.files, all)
		if err != nil {
			return nil, err
		}
		key = "context:" + sum
		getPath = func(context.Context) (string, func(), error) { return resolved, func() {}, nil }
	} else {
		from, err := b.fromSource(ctx, m.From)
		if err != nil {
			return nil, err
		}
		diffIDs, layers := from.diffIDs, from.layers
		// A stage mounts its filesystem: keyed on its content (chain ID).
		key = "from:" + from.id
		if from.stage {
			key = "from:stage@" + from.chainID
		}
		getPath = func(ctx context.Context) (string, func(), error) {
			if err := b.needLayers(ctx, layers); err != nil {
				return "", nil, err
			}
			root, release, err := b.root.View(ctx, diffIDs, layers, fmt.Sprintf("view-%d-%d", os.Getpid(), activeSeq.Add(1)))
			if err != nil {
				return "", nil, err
			}
			p, err := rootpath.Join(root, src)
			if err != nil {
				release()
				return "", nil, err
			}
			return p, release, nil
		}
	}
	return &runMount{m: m, key: fmt.Sprintf("bind,target=%s,source=%s,rw=%v,%s", m.Target, src, rw, key),
		prepare: func(ctx context.Context, _, _ uint32) (executor.Mount, func(), error) {
			if filtered != nil {
				tmp, err := os.MkdirTemp(b.root.RunDir(), "bind-")
				if err != nil {
					return executor.Mount{}, nil, err
				}
				if err := copyInto(tmp, "/", copySpec{Dest: "/"}, filtered, 0); err != nil {
					os.RemoveAll(tmp)
					return executor.Mount{}, nil, fmt.Errorf("copy bind source: %w", err)
				}
				opts := []string{"rbind"}
				if !rw {
					opts = append(opts, "ro")
				}
				return executor.Mount{Type: "bind", Source: tmp, Destination: m.Target, Options: opts}, func() { os.RemoveAll(tmp) }, nil
			}
			p, release, err := getPath(ctx)
			if err != nil {
				return executor.Mount{}, nil, err
			}
			if !rw {
				return executor.Mount{Type: "bind", Source: p, Destination: m.Target, Options: []string{"rbind", "ro"}}, release, nil
			}
			// rw: writes go to a private copy and are discarded, as in BuildKit.
			tmp, err := os.MkdirTemp(b.root.RunDir(), "bind-")
			if err != nil {
				release()
				return executor.Mount{}, nil, err
			}
			dst := filepath.Join(tmp, "src")
			if out, err := exec.Command("cp", "-a", p, dst).CombinedOutput(); err != nil {
				release()
				os.RemoveAll(tmp)
				return executor.Mount{}, nil, fmt.Errorf("copy bind source: %v: %s", err, out)
			}
			release()
			return executor.Mount{Type: "bind", Source: dst, Destination: m.Target, Options: []string{"rbind"}}, func() { os.RemoveAll(tmp) }, nil
		}}, nil
}

// lineWriter splits a step's output into lines for the progress view and
// keeps the last ones for the error message.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	tail []string
	emit func(string)
}

const tailLines = 10

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			break
		}
		w.line(strings.TrimRight(line, "\r\n"))
	}
	return len(p), nil
}

func (w *lineWriter) line(s string) {
	w.emit(s)
	w.tail = append(w.tail, s)
	if len(w.tail) > tailLines {
		w.tail = w.tail[1:]
	}
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() > 0 {
		w.line(w.buf.String())
		w.buf.Reset()
	}
}

func (w *lineWriter) tailText() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.tail) == 0 {
		return ""
	}
	return "; last output:\n  " + strings.Join(w.tail, "\n  ")
}
