package builder

// The metadata instructions: each sets part of the image config and leaves
// a history entry with no layer (empty_layer).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/imagecfg"
)

func (b *build) dispatchEnv(ctx context.Context, st *stageState, c *instructions.EnvCommand) error {
	parts := make([]string, 0, len(c.Env))
	for _, e := range c.Env {
		st.cfg.Config.Env = imagecfg.SetEnv(st.cfg.Config.Env, e.Key, e.Value)
		delete(st.argOver, e.Key)
		parts = append(parts, e.Key+"="+e.Value)
	}
	return b.meta(ctx, st, "ENV "+strings.Join(parts, " "), c.Env)
}

func (b *build) dispatchLabel(ctx context.Context, st *stageState, c *instructions.LabelCommand) error {
	if st.cfg.Config.Labels == nil {
		st.cfg.Config.Labels = map[string]string{}
	}
	parts := make([]string, 0, len(c.Labels))
	for _, l := range c.Labels {
		st.cfg.Config.Labels[l.Key] = l.Value
		parts = append(parts, l.Key+"="+strconv.Quote(l.Value))
	}
	return b.meta(ctx, st, "LABEL "+strings.Join(parts, " "), c.Labels)
}

func (b *build) dispatchMaintainer(ctx context.Context, st *stageState, c *instructions.MaintainerCommand) error {
	st.cfg.Author = c.Maintainer
	return b.meta(ctx, st, "MAINTAINER "+c.Maintainer, nil)
}

func (b *build) dispatchWorkdir(ctx context.Context, st *stageState, c *instructions.WorkdirCommand) error {
	wd := c.Path
	if !path.IsAbs(wd) {
		cur := st.cfg.Config.WorkingDir
		if cur == "" {
			cur = "/"
		}
		wd = path.Join(cur, wd)
	}
	wd = path.Clean(wd)
	st.cfg.Config.WorkingDir = wd
	text := "WORKDIR " + wd
	if wd == "/" {
		return b.meta(ctx, st, text, nil)
	}
	// As in BuildKit, the directory and its missing parents are made now, in
	// this step's layer (mode 0755), owned by the USER in effect; existing
	// ones are left as they are.
	user := st.cfg.Config.User
	in := cache.Inputs{Instruction: text, User: user}
	return b.step(ctx, st, text, in, func(ctx context.Context, root string) error {
		var uid, gid uint32
		if user != "" {
			var err error
			if uid, gid, err = imagecfg.ResolveUser(root, user, false); err != nil {
				return fmt.Errorf("WORKDIR %s as USER %s: %w", wd, user, err)
			}
		}
		return mkdirAll(root, wd, uid, gid, user != "")
	})
}

func (b *build) dispatchUser(ctx context.Context, st *stageState, c *instructions.UserCommand) error {
	st.cfg.Config.User = c.User
	return b.meta(ctx, st, "USER "+c.User, nil)
}

func (b *build) dispatchExpose(ctx context.Context, st *stageState, c *instructions.ExposeCommand) error {
	if st.cfg.Config.ExposedPorts == nil {
		st.cfg.Config.ExposedPorts = map[string]struct{}{}
	}
	// EXPOSE has no Expand method in the instructions package: BuildKit
	// expands its words in dispatch (ProcessWords: "${PORTS}" may give
	// several ports).
	var words []string
	env := st.expandEnv()
	for _, p := range c.Ports {
		res, err := b.lex.ProcessWordWithMatches(p, env)
		if err != nil {
			return err
		}
		st.note.used(res.Matched)
		words = append(words, res.Words...)
	}
	var ports []string
	for _, p := range words {
		ps, err := expandPorts(p)
		if err != nil {
			return err
		}
		for _, p := range ps {
			st.cfg.Config.ExposedPorts[p] = struct{}{}
			ports = append(ports, p)
		}
	}
	return b.meta(ctx, st, "EXPOSE "+strings.Join(ports, " "), nil)
}

func (b *build) dispatchVolume(ctx context.Context, st *stageState, c *instructions.VolumeCommand) error {
	if st.cfg.Config.Volumes == nil {
		st.cfg.Config.Volumes = map[string]struct{}{}
	}
	for _, v := range c.Volumes {
		if v == "" {
			return errors.New("VOLUME specified can not be an empty string")
		}
		st.cfg.Config.Volumes[v] = struct{}{}
	}
	return b.meta(ctx, st, fmt.Sprintf("VOLUME %v", c.Volumes), c.Volumes)
}

func (b *build) dispatchCmd(ctx context.Context, st *stageState, c *instructions.CmdCommand) error {
	args := st.withShell(c.CmdLine, c.PrependShell)
	st.cfg.Config.Cmd = args
	st.cmdSet = true
	return b.meta(ctx, st, fmt.Sprintf("CMD %s", jsonArgs(args)), nil)
}

func (b *build) dispatchEntrypoint(ctx context.Context, st *stageState, c *instructions.EntrypointCommand) error {
	args := st.withShell(c.CmdLine, c.PrependShell)
	st.cfg.Config.Entrypoint = args
	if !st.cmdSet {
		st.cfg.Config.Cmd = nil
	}
	return b.meta(ctx, st, fmt.Sprintf("ENTRYPOINT %s", jsonArgs(args)), nil)
}

func (b *build) dispatchShell(ctx context.Context, st *stageState, c *instructions.ShellCommand) error {
	st.cfg.Config.Shell = append([]string(nil), c.Shell...)
	return b.meta(ctx, st, fmt.Sprintf("SHELL %s", jsonArgs(c.Shell)), nil)
}

func (b *build) dispatchStopSignal(ctx context.Context, st *stageState, c *instructions.StopSignalCommand) error {
	if err := checkSignal(c.Signal); err != nil {
		return err
	}
	st.cfg.Config.StopSignal = c.Signal
	return b.meta(ctx, st, "STOPSIGNAL "+c.Signal, nil)
}

func (b *build) dispatchHealthcheck(ctx context.Context, st *stageState, c *instructions.HealthCheckCommand) error {
	h := c.Health
	st.cfg.Config.Healthcheck = &v1.HealthConfig{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}
	return b.meta(ctx, st, fmt.Sprintf("HEALTHCHECK %s", jsonArgs(h.Test)), st.cfg.Config.Healthcheck)
}

func (b *build) dispatchOnbuild(ctx context.Context, st *stageState, c *instructions.OnbuildCommand) error {
	st.cfg.Config.OnBuild = append(st.cfg.Config.OnBuild, c.Expression)
	return b.meta(ctx, st, "ONBUILD "+c.Expression, nil)
}

// meta runs a metadata step: a history entry with empty_layer and no layer.
// Its key is the instruction as expanded, plus the exact values it sets
// (data, as JSON) where the shown text could read the same for two
// different instructions (ENV A="1 B=2" and ENV A=1 B=2): the config it
// yields follows from the parent state and these alone.
func (b *build) meta(ctx context.Context, st *stageState, text string, data any) error {
	in := cache.Inputs{Instruction: text}
	if data != nil {
		j, err := json.Marshal(data)
		if err != nil {
			return err
		}
		in.Data = string(j)
	}
	return b.step(ctx, st, text, in, nil)
}

func (s *stageState) withShell(args []string, prepend bool) []string {
	if !prepend {
		return append([]string(nil), args...)
	}
	sh := s.cfg.Config.Shell
	if len(sh) == 0 {
		sh = []string{"/bin/sh", "-c"}
	}
	return append(append([]string(nil), sh...), strings.Join(args, " "))
}

func jsonArgs(a []string) string {
	q := make([]string, len(a))
	for i, s := range a {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, " ") + "]"
}

// expandPorts turns "80", "80/udp" or "8000-8002/tcp" into "N/proto" keys.
func expandPorts(p string) ([]string, error) {
	port, proto, _ := strings.Cut(p, "/")
	if proto == "" {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return nil, fmt.Errorf("invalid proto %q in EXPOSE %s: use tcp, udp or sctp", proto, p)
	}
	lo, hi, isRange := strings.Cut(port, "-")
	a, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("invalid port %q in EXPOSE: use a number 1-65535", p)
	}
	b := a
	if isRange {
		if b, err = strconv.ParseUint(hi, 10, 16); err != nil || b < a {
			return nil, fmt.Errorf("invalid port range %q in EXPOSE", p)
		}
	}
	var out []string
	for n := a; n <= b; n++ {
		out = append(out, fmt.Sprintf("%d/%s", n, proto))
	}
	return out, nil
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "STOP": syscall.SIGSTOP,
	"PWR": syscall.SIGPWR, "WINCH": syscall.SIGWINCH, "ABRT": syscall.SIGABRT, "ALRM": syscall.SIGALRM,
}

func checkSignal(s string) error {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return fmt.Errorf("invalid signal %q: use a name like SIGTERM or a number 1-64", s)
		}
		return nil
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if _, ok := signals[name]; ok || strings.HasPrefix(name, "RTMIN") || strings.HasPrefix(name, "RTMAX") {
		return nil
	}
	return fmt.Errorf("invalid signal %q: use a name like SIGTERM or a number 1-64", s)
}

// dispatchArg brings ARGs into scope. Its cache key holds the names only: the
// value reaches the cache keys of the steps that use it (RUN's environment, or
// a word it expands into), so changing it misses from its first use.
func (b *build) dispatchArg(ctx context.Context, st *stageState, c *instructions.ArgCommand) error {
	names := make([]string, 0, len(c.Args))
	shown := make([]string, 0, len(c.Args))
	for _, a := range c.Args {
		b.useArg(a.Key)
		var val *string
		if v, ok := b.opts.BuildArgs[a.Key]; ok {
			val = &v
		} else if a.Value != nil {
			v, _, err := b.lex.ProcessWord(*a.Value, st.expandEnv())
			if err != nil {
				return err
			}
			val = &v
		} else {
			for _, m := range b.metaArgs {
				if m.k == a.Key {
					v := m.v
					val = &v
				}
			}
		}
		names = append(names, a.Key)
		if val != nil {
			st.args = setKV(st.args, a.Key, *val)
			if st.argOver == nil {
				st.argOver = map[string]bool{}
			}
			st.argOver[a.Key] = true
			shown = append(shown, a.Key+"="+*val)
		} else {
			shown = append(shown, a.Key)
		}
	}
	return b.step(ctx, st, "ARG "+strings.Join(shown, " "), cache.Inputs{Instruction: "ARG " + strings.Join(names, " ")}, nil)
}
