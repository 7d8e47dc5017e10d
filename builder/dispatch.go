package builder

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
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/snapshot"
)

// historyComment marks history entries lbuild wrote, as BuildKit writes "buildkit.dockerfile.v0".
const historyComment = "lbuild.dockerfile.v0"

// dispatch expands a command's words against the stage's state and runs it.
// One function per instruction, picked here.
func (b *build) dispatch(ctx context.Context, st *stageState, c instructions.Command) error {
	if _, isArg := c.(*instructions.ArgCommand); !isArg {
		if ex, ok := c.(instructions.SupportsSingleWordExpansion); ok {
			env := st.expandEnv()
			if err := ex.Expand(func(w string) (string, error) {
				out, _, err := b.lex.ProcessWord(w, env)
				return out, err
			}); err != nil {
				return err
			}
		}
	}
	// Heredoc bodies (COPY <<EOF) expand like a shell heredoc: quotes are
	// kept, as BuildKit does with SkipProcessQuotes.
	if ex, ok := c.(instructions.SupportsSingleWordExpansionRaw); ok {
		lex := shell.NewLex(b.df.Escape)
		lex.SkipProcessQuotes = true
		env := st.expandEnv()
		if err := ex.ExpandRaw(func(w string) (string, error) {
			out, _, err := lex.ProcessWord(w, env)
			return out, err
		}); err != nil {
			return err
		}
	}
	st.index++
	switch c := c.(type) {
	case *instructions.EnvCommand:
		parts := make([]string, 0, len(c.Env))
		for _, e := range c.Env {
			st.cfg.Config.Env = imagecfg.SetEnv(st.cfg.Config.Env, e.Key, e.Value)
			parts = append(parts, e.Key+"="+e.Value)
		}
		return b.meta(ctx, st, "ENV "+strings.Join(parts, " "), c.Env)
	case *instructions.LabelCommand:
		if st.cfg.Config.Labels == nil {
			st.cfg.Config.Labels = map[string]string{}
		}
		parts := make([]string, 0, len(c.Labels))
		for _, l := range c.Labels {
			st.cfg.Config.Labels[l.Key] = l.Value
			parts = append(parts, l.Key+"="+strconv.Quote(l.Value))
		}
		return b.meta(ctx, st, "LABEL "+strings.Join(parts, " "), c.Labels)
	case *instructions.MaintainerCommand:
		st.cfg.Author = c.Maintainer
		return b.meta(ctx, st, "MAINTAINER "+c.Maintainer, nil)
	case *instructions.WorkdirCommand:
		wd := c.Path
		if !path.IsAbs(wd) {
			cur := st.cfg.Config.WorkingDir
			if cur == "" {
				cur = "/"
			}
			wd = path.Join(cur, wd)
		}
		st.cfg.Config.WorkingDir = path.Clean(wd)
		return b.meta(ctx, st, "WORKDIR "+st.cfg.Config.WorkingDir, nil)
	case *instructions.UserCommand:
		st.cfg.Config.User = c.User
		return b.meta(ctx, st, "USER "+c.User, nil)
	case *instructions.ExposeCommand:
		if st.cfg.Config.ExposedPorts == nil {
			st.cfg.Config.ExposedPorts = map[string]struct{}{}
		}
		var ports []string
		for _, p := range c.Ports {
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
	case *instructions.VolumeCommand:
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
	case *instructions.CmdCommand:
		args := st.withShell(c.CmdLine, c.PrependShell)
		st.cfg.Config.Cmd = args
		st.cmdSet = true
		return b.meta(ctx, st, fmt.Sprintf("CMD %s", jsonArgs(args)), nil)
	case *instructions.EntrypointCommand:
		args := st.withShell(c.CmdLine, c.PrependShell)
		st.cfg.Config.Entrypoint = args
		if !st.cmdSet {
			st.cfg.Config.Cmd = nil
		}
		return b.meta(ctx, st, fmt.Sprintf("ENTRYPOINT %s", jsonArgs(args)), nil)
	case *instructions.ShellCommand:
		st.cfg.Config.Shell = append([]string(nil), c.Shell...)
		return b.meta(ctx, st, fmt.Sprintf("SHELL %s", jsonArgs(c.Shell)), nil)
	case *instructions.StopSignalCommand:
		if err := checkSignal(c.Signal); err != nil {
			return err
		}
		st.cfg.Config.StopSignal = c.Signal
		return b.meta(ctx, st, "STOPSIGNAL "+c.Signal, nil)
	case *instructions.HealthCheckCommand:
		h := c.Health
		st.cfg.Config.Healthcheck = &v1.HealthConfig{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, Retries: h.Retries}
		return b.meta(ctx, st, fmt.Sprintf("HEALTHCHECK %s", jsonArgs(h.Test)), st.cfg.Config.Healthcheck)
	case *instructions.OnbuildCommand:
		st.cfg.Config.OnBuild = append(st.cfg.Config.OnBuild, c.Expression)
		return b.meta(ctx, st, "ONBUILD "+c.Expression, nil)
	case *instructions.ArgCommand:
		return b.dispatchArg(ctx, st, c)
	case *instructions.CopyCommand:
		return b.dispatchCopy(ctx, st, copyFromCopy(c))
	case *instructions.AddCommand:
		return b.dispatchCopy(ctx, st, copyFromAdd(c))
	case *instructions.RunCommand:
		return b.dispatchRun(ctx, st, c)
	}
	return fmt.Errorf("instruction %s is not supported", strings.ToUpper(c.Name()))
}

// dispatchArg brings ARGs into scope. Its cache key holds the names only: the
// value reaches the cache keys of the steps that use it (RUN's environment, or
// a word it expands into), so changing it misses from its first use.
func (b *build) dispatchArg(ctx context.Context, st *stageState, c *instructions.ArgCommand) error {
	names := make([]string, 0, len(c.Args))
	shown := make([]string, 0, len(c.Args))
	for _, a := range c.Args {
		b.usedArgs[a.Key] = true
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
			shown = append(shown, a.Key+"="+*val)
		} else {
			shown = append(shown, a.Key)
		}
	}
	return b.step(ctx, st, "ARG "+strings.Join(shown, " "), []string{"ARG " + strings.Join(names, " ")}, nil)
}

// meta runs a metadata step: a history entry with empty_layer and no layer.
// Its key is the instruction as expanded, plus the exact values it sets
// (data, as JSON) where the shown text could read the same for two
// different instructions (ENV A="1 B=2" and ENV A=1 B=2): the config it
// yields follows from the parent state and these alone.
func (b *build) meta(ctx context.Context, st *stageState, text string, data any) error {
	parts := []string{text}
	if data != nil {
		j, err := json.Marshal(data)
		if err != nil {
			return err
		}
		parts = append(parts, string(j))
	}
	return b.step(ctx, st, text, parts, nil)
}

// layerFunc changes the filesystem view at root (an active snapshot).
type layerFunc func(ctx context.Context, root string) error

// step is the one path every instruction takes: derive the key from the
// parent key and keyParts, reuse a cached record, or execute (a layer step runs
// fn on a snapshot of the parent and commits the diff) and record the result.
func (b *build) step(ctx context.Context, st *stageState, text string, keyParts []string, fn layerFunc) error {
	// The key chains the parent's key and the content it stands on (its chain
	// ID): a --no-cache build may record a different result under a key, and
	// what was built on the old result must then not be taken for the new.
	key := cache.NewKey(st.key, append([]string{"parent=" + st.chainID}, keyParts...)...)
	b.stepNo++
	id := b.stepNo
	b.prog.Start(id, st.label(text))
	res := StepResult{Stage: st.name, Text: text, Key: key}

	if !b.opts.NoCache {
		rec, err := b.root.Records.Get(key)
		switch {
		case err == nil && b.usable(rec, fn != nil):
			st.apply(rec, text, key)
			b.prog.Cached(id)
			res.Cached, res.DiffID, res.ChainID = true, rec.DiffID, st.chainID
			b.steps = append(b.steps, res)
			return nil
		case err != nil && !errors.Is(err, cache.ErrNotFound):
			logrus.Debugf("cache record %s unreadable, rebuilding: %v", key, err)
		}
	}

	rec := &cache.Record{Key: key, Created: b.opts.Now().UTC(), CreatedBy: text, EmptyLayer: fn == nil}
	if fn != nil {
		diffID, size, err := b.commitLayer(ctx, st, fn)
		if err != nil {
			b.prog.Done(id, err)
			return err
		}
		rec.DiffID, rec.Size = diffID.String(), size
	}
	if err := b.root.Records.Put(rec); err != nil {
		b.prog.Done(id, err)
		return fmt.Errorf("record cache: %w", err)
	}
	st.apply(rec, text, key)
	b.prog.Done(id, nil)
	res.DiffID, res.ChainID = rec.DiffID, st.chainID
	b.steps = append(b.steps, res)
	return nil
}

// usable reports whether a cached record can stand in for running the step:
// a layer step needs its layer blob in the store.
func (b *build) usable(rec *cache.Record, layer bool) bool {
	if !layer {
		return rec.DiffID == ""
	}
	if rec.DiffID == "" {
		return false
	}
	h, err := v1.NewHash(rec.DiffID)
	return err == nil && b.root.Store.HasBlob(h)
}

// apply advances the stage by a step's record.
func (s *stageState) apply(rec *cache.Record, text string, key cache.Key) {
	created := v1.Time{Time: rec.Created}
	s.cfg.History = append(s.cfg.History, v1.History{Created: created, CreatedBy: text, Comment: historyComment, EmptyLayer: rec.DiffID == ""})
	s.cfg.Created = created
	s.key = key
	if rec.DiffID == "" {
		return
	}
	h, _ := v1.NewHash(rec.DiffID)
	s.cfg.RootFS.DiffIDs = append(s.cfg.RootFS.DiffIDs, h)
	s.layers = append(s.layers, v1.Descriptor{MediaType: layerMediaType, Digest: h, Size: rec.Size})
	s.chainID = snapshot.ChainID(s.chainID, rec.DiffID)
}

const layerMediaType = "application/vnd.oci.image.layer.v1.tar"

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
