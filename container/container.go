// Package container runs containers: an image run with one writable layer of its own:
// a persistent active snapshot over the image's chain of unpacked layers,
// which every container of that image shares read-only (nothing is copied
// when a container starts). Between the image and the container's layer sits
// the image's init layer, a committed snapshot holding only the mount-point
// stubs the runtime needs (/proc, /dev, /sys, /etc/hosts, ...), shared by
// all containers of the image, so that the stubs never show up in a
// container's diff or in a committed layer.
//
// On disk:
//
//	ROOT/containers/<id>/config.json  the Container record (temp + rename; synced unless --rm)
//	ROOT/containers/<id>/lock         flock held while updating the record
//	ROOT/containers/<id>/container.log  the process's stdout and stderr
//	ROOT/containers/.lock             flock held while creating and removing
//
// The process that waits for a container's process (lbuild itself in the
// foreground, or a detached "shim" started by "lbuild run -d") is the
// container's Owner and records its exit; a record whose owner died without
// doing so is reconciled the next time it is read (marked exited), and a
// --rm container's is removed by the next Recover.
//
// It stands on system (the opened root: store, snapshots, unpacking) and
// on the runtime driver (runtime/runc); it never imports the builder, nor
// the builder it.
package container

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/lbuild/lbuild/internal/fsx"
	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/system"
	"github.com/sirupsen/logrus"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/runtime/runc"
	"github.com/lbuild/lbuild/snapshot"
)

// Manager runs the containers of one store root.
type Manager struct{ root *system.Root }

// New returns the container manager of root. It recovers nothing: see
// Recover.
func New(root *system.Root) *Manager { return &Manager{root: root} }

// Roots lists what every container needs kept by prune: its image's
// manifest (and so its config and layers) and the layers it stands on.
func (r *Manager) Roots() ([]system.ContainerRoot, error) {
	all, err := r.loadAll()
	if err != nil {
		return nil, err
	}
	out := make([]system.ContainerRoot, 0, len(all))
	for _, c := range all {
		root := system.ContainerRoot{Manifest: c.Manifest}
		if img, err := r.root.Store.Image(c.Manifest); err == nil {
			root.Chain = system.ChainID(img.Config.RootFS.DiffIDs)
		}
		out = append(out, root)
	}
	return out, nil
}

// Root is the store root the manager runs on.
func (r *Manager) Root() *system.Root { return r.root }

// Recover cleans up after lbuild processes that died: first their runtime
// containers (runc runs in its own process group, so a RUN or a container
// outlives a killed lbuild), then containers whose creation never finished,
// --rm containers whose owner died (its pid and start time no longer match a
// process) and --rm containers whose record a crash cut, then the mounts and
// temp dirs of snapshots nobody owns. Only what is provably dead is touched:
// its owner's lock is free or its owner gone, or its record is unreadable,
// which no live process shows (records are renamed into place). What cannot
// be removed yet is left, with a warning, for the next Recover. Commands that
// create runtime state run it once, at start; read-only commands never do.
func Recover(ctx context.Context, root *system.Root) error {
	if _, err := os.Stat(filepath.Join(root.RunDir(), "runc")); err == nil {
		rc, err := runc.NewRunc("", root.RunDir())
		if err != nil && !errors.Is(err, runc.ErrRuntimeNotFound) {
			return err
		}
		if err == nil {
			if err := rc.Cleanup(ctx); err != nil {
				return fmt.Errorf("clean up runtime state: %w", err)
			}
		}
	}
	if err := New(root).reapUnfinished(ctx); err != nil {
		return fmt.Errorf("clean up unfinished containers: %w", err)
	}
	if err := root.Snaps.Cleanup(ctx); err != nil {
		return fmt.Errorf("clean up snapshots: %w", err)
	}
	return nil
}

// Container statuses.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusExited  = "exited"
)

// ErrNotFound is returned (wrapped) for an unknown container name
// or ID.
var ErrNotFound = errors.New("no such container")

// Container is the record of one container.
type Container struct {
	ID      string  `json:"id"`   // 64 hex digits
	Name    string  `json:"name"` // unique among containers
	Image   string  `json:"image"`
	ImageID v1.Hash `json:"imageId"`
	// Manifest is the image's manifest digest (commit starts from it).
	Manifest v1.Hash  `json:"manifest"`
	Args     []string `json:"args"`
	Env      []string `json:"env"`
	Cwd      string   `json:"cwd"`
	User     string   `json:"user,omitempty"`
	Network  string   `json:"network"`
	Binds    []string `json:"binds,omitempty"`
	// Ports are the ports published on the host (run -p).
	Ports   []runc.PortMapping `json:"ports,omitempty"`
	Created time.Time          `json:"created"`

	Status   string     `json:"status"`
	ExitCode int        `json:"exitCode"` // -1: unknown (the owner died)
	Error    string     `json:"error,omitempty"`
	Started  time.Time  `json:"started,omitzero"`
	Finished time.Time  `json:"finished,omitzero"`
	Owner    runc.Owner `json:"owner,omitzero"`

	Snapshot   string `json:"snapshot"` // active snapshot key
	Rootfs     string `json:"rootfs"`
	LogPath    string `json:"logPath"`
	Runtime    string `json:"runtime,omitempty"`
	StopSignal string `json:"stopSignal,omitempty"`
	AutoRemove bool   `json:"autoRemove,omitempty"`
	// SecurityOpts are the --security-opt values it was created with.
	SecurityOpts []string `json:"securityOpts,omitempty"`
}

// ShortID is the first 12 hex digits of the ID.
func (c *Container) ShortID() string { return c.ID[:12] }

// Running reports whether the container's process runs (or is starting).
func (c *Container) Running() bool { return c.Status == StatusRunning }

// Options describe a container to create.
type Options struct {
	// Image is a name or ID the store resolves.
	Image string
	// Name is the container's name; "" picks a random one.
	Name string
	// Cmd replaces the image's CMD (the ENTRYPOINT stays).
	Cmd []string
	// Env adds KEY=VALUE to the image's environment (replacing a key).
	Env []string
	// Workdir and User replace the image's WORKDIR and USER.
	Workdir, User string
	// Network is "" or "default" (the container's own network namespace,
	// outbound only, through slirp4netns), "host" or "none".
	Network string
	// Binds are HOST:CONTAINER[:ro|:rw] bind mounts.
	Binds []string
	// Ports are docker run -p's [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]
	// (see runc.ParsePort; the host address defaults to 127.0.0.1),
	// published while the container runs. Only on the default network.
	Ports []string
	// Runtime is the OCI runtime binary ("" = runc from PATH).
	Runtime string
	// AutoRemove removes the container when its process exits.
	AutoRemove bool
	// SecurityOpts are docker run's --security-opt values. Only
	// "seccomp=unconfined" (no seccomp filter) is supported: by default
	// the process runs under Docker's default seccomp profile.
	SecurityOpts []string
}

// parseSecurityOpts returns whether opts ask for no seccomp filter.
func parseSecurityOpts(opts []string) (unconfined bool, err error) {
	for _, o := range opts {
		switch o {
		case "seccomp=unconfined", "seccomp:unconfined":
			unconfined = true
		default:
			return false, fmt.Errorf("unsupported --security-opt %q: lbuild supports seccomp=unconfined only", o)
		}
	}
	return unconfined, nil
}

func (r *Manager) containersDir() string         { return r.root.ContainersDir() }
func (r *Manager) containerDir(id string) string { return filepath.Join(r.containersDir(), id) }

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// runtime returns the runc executor for container c.
func (r *Manager) runtime(c *Container) (*runc.Runc, error) {
	return runc.NewRunc(c.Runtime, r.root.RunDir())
}

// Create makes a container of opts.Image without starting it: it
// unpacks the image's missing layers (each once, shared), prepares the
// container's own layer and writes the runtime bundle and the record
// (status "created").
func (r *Manager) Create(ctx context.Context, opts Options) (_ *Container, retErr error) {
	if opts.Name != "" && !nameRE.MatchString(opts.Name) {
		return nil, fmt.Errorf("invalid container name %q: use letters, digits, '_', '.' and '-'", opts.Name)
	}
	unconfined, err := parseSecurityOpts(opts.SecurityOpts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.containersDir(), 0o700); err != nil {
		return nil, err
	}
	// Until its record exists, the container's layers are only ours: hold
	// the root against prune.
	release, err := r.root.Lease()
	if err != nil {
		return nil, err
	}
	defer release()
	if opts.Name != "" {
		if _, err := r.findContainer(opts.Name, true); err == nil {
			return nil, fmt.Errorf("container name %q is already in use", opts.Name)
		}
	}
	img, err := r.root.Store.Resolve(opts.Image)
	if err != nil {
		return nil, err
	}
	cfg := img.Config
	args := append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...)
	if len(opts.Cmd) > 0 {
		args = append(append([]string{}, cfg.Config.Entrypoint...), opts.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("image %s has no CMD or ENTRYPOINT: give a command", opts.Image)
	}
	network, err := runc.ParseNetwork(opts.Network)
	if err != nil {
		return nil, err
	}
	mounts, err := parseBinds(opts.Binds)
	if err != nil {
		return nil, err
	}
	var ports []runc.PortMapping
	for _, p := range opts.Ports {
		pm, err := runc.ParsePort(p)
		if err != nil {
			return nil, err
		}
		ports = append(ports, pm)
	}
	if len(ports) > 0 && network != runc.NetworkPrivate {
		return nil, fmt.Errorf("-p publishes ports only on the default network, not with --network %s", network)
	}

	c := &Container{
		ID: randomHex(32), Name: opts.Name, Image: opts.Image, ImageID: img.ID, Manifest: img.Manifest.Digest,
		Args: args, Network: network, Binds: opts.Binds, Ports: ports, Created: time.Now().UTC(), Status: StatusCreated,
		Runtime: opts.Runtime, StopSignal: cfg.Config.StopSignal, AutoRemove: opts.AutoRemove,
		SecurityOpts: opts.SecurityOpts,
	}
	c.Snapshot = "ctr-" + c.ID
	// Until the record exists, a locked marker says this container is being
	// made; a crash before then leaves a marker whose lock is free, and the
	// next start reaps what was made (reapUnfinished).
	done, err := r.markCreating(c.ID)
	if err != nil {
		return nil, err
	}
	defer done()
	c.LogPath = filepath.Join(r.containerDir(c.ID), "container.log")
	hostname := c.ShortID()
	c.Env = mergeEnv(cfg.Config.Env, append([]string{"HOSTNAME=" + hostname}, opts.Env...))
	if _, ok := imagecfg.LookupEnv(c.Env, "PATH"); !ok {
		c.Env = append(c.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	c.Cwd = cfg.Config.WorkingDir
	if opts.Workdir != "" {
		c.Cwd = opts.Workdir
	}
	if c.Cwd == "" {
		c.Cwd = "/"
	}
	c.User = cfg.Config.User
	if opts.User != "" {
		c.User = opts.User
	}

	rt, err := r.runtime(c)
	if err != nil {
		return nil, err
	}
	if err := r.root.EnsureChain(ctx, cfg.RootFS.DiffIDs, img.Layers); err != nil {
		return nil, err
	}
	parent, err := r.initLayer(ctx, system.ChainID(cfg.RootFS.DiffIDs))
	if err != nil {
		return nil, fmt.Errorf("init layer: %w", err)
	}
	popts := []snapshot.Opt{snapshot.WithPersistent()}
	if c.AutoRemove {
		popts = append(popts, snapshot.Volatile())
	}
	c.Rootfs, err = r.root.Snaps.Prepare(ctx, c.Snapshot, parent, popts...)
	if err != nil {
		return nil, fmt.Errorf("prepare container layer: %w", err)
	}
	defer func() {
		if retErr != nil {
			r.root.Snaps.Remove(context.WithoutCancel(ctx), c.Snapshot)
		}
	}()
	meta := runc.Meta{Args: args, Env: c.Env, Cwd: c.Cwd, Hostname: hostname, Network: network, Ports: ports,
		Mounts: mounts, SeccompUnconfined: unconfined}
	if c.User != "" {
		if meta.UID, meta.GID, err = imagecfg.ResolveUser(c.Rootfs, c.User, false); err != nil {
			return nil, fmt.Errorf("user %s: %w", c.User, err)
		}
		meta.AdditionalGids = imagecfg.SupplementaryGroups(c.Rootfs, c.User)
	}
	if err := rt.Create(c.ID, c.Rootfs, meta); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			rt.Delete(context.WithoutCancel(ctx), c.ID)
		}
	}()

	unlock, err := r.lockContainers()
	if err != nil {
		return nil, err
	}
	defer unlock()
	all, err := r.loadAll()
	if err != nil {
		return nil, err
	}
	taken := map[string]bool{}
	for _, o := range all {
		taken[o.Name] = true
	}
	if c.Name == "" {
		for c.Name = randomName(); taken[c.Name]; c.Name = randomName() {
		}
	} else if taken[c.Name] {
		return nil, fmt.Errorf("container name %q is already in use", c.Name)
	}
	if err := os.Mkdir(r.containerDir(c.ID), 0o700); err != nil {
		return nil, err
	}
	if err := r.writeRecord(c); err != nil {
		os.RemoveAll(r.containerDir(c.ID))
		return nil, err
	}
	return c, nil
}

// parseBinds turns HOST:CONTAINER[:ro|:rw] into executor mounts.
func parseBinds(binds []string) ([]runc.Mount, error) {
	var out []runc.Mount
	for _, b := range binds {
		parts := strings.Split(b, ":")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || !strings.HasPrefix(parts[1], "/") {
			return nil, fmt.Errorf("invalid volume %q: use HOST:CONTAINER[:ro]", b)
		}
		src, err := filepath.Abs(parts[0])
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("volume %q: %w", b, err)
		}
		m := runc.Mount{Type: "bind", Source: src, Destination: parts[1], Options: []string{"rbind"}}
		if len(parts) == 3 {
			switch parts[2] {
			case "ro":
				m.Options = append(m.Options, "ro")
			case "rw":
			default:
				return nil, fmt.Errorf("invalid volume %q: mode must be ro or rw", b)
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// mergeEnv returns base with each KEY=VALUE of add set (replacing a key).
func mergeEnv(base, add []string) []string {
	out := append([]string{}, base...)
	for _, kv := range add {
		k, v, _ := strings.Cut(kv, "=")
		out = imagecfg.SetEnv(out, k, v)
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

var (
	nameAdjectives = []string{"brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty", "proud", "quiet", "sharp", "tender", "vivid", "witty", "zen"}
	nameNouns      = []string{"babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler", "lovelace", "meitner", "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wozniak"}
)

func randomName() string {
	pick := func(l []string) string {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(l))))
		return l[n.Int64()]
	}
	return pick(nameAdjectives) + "_" + pick(nameNouns)
}

// creatingMarker is the lock file held while container id is being made.
func (r *Manager) creatingMarker(id string) string {
	return filepath.Join(r.containersDir(), ".creating-"+id+".lock")
}

func (r *Manager) markCreating(id string) (func(), error) {
	if err := os.MkdirAll(r.containersDir(), 0o700); err != nil {
		return nil, err
	}
	unlock, err := fsx.LockFunc(r.creatingMarker(id))
	if err != nil {
		return nil, err
	}
	return func() {
		os.Remove(r.creatingMarker(id))
		unlock()
	}, nil
}

// reapUnfinished removes what a crashed Create left without a record, --rm
// containers whose owner died, and --rm containers whose record a crash cut
// (their records are not synced: writeRecord): their runtime containers and
// their persistent snapshots. A marker whose lock is held belongs to a
// creation in progress and is left alone. A record is written by rename, so
// a live process never shows an unreadable one: unreadable means cut by a
// crash. A container with a cut record is removed only if its layer is a
// --rm one (Volatile) or was cut too, or is gone; an unreadable record of a
// kept container (synced: a damaged disk) is left, with a warning, for the
// user to look at. What cannot be removed now (a runtime gone, a layer in
// use) is left, with a warning, for the next recovery: it never fails the
// command that recovers.
func (r *Manager) reapUnfinished(ctx context.Context) error {
	ents, err := os.ReadDir(r.containersDir())
	if err != nil {
		return nil // no containers dir: nothing was ever made
	}
	// reap removes container id; its directory goes only once its layer
	// has, so that a failure is retried by the next recovery.
	reap := func(id string) {
		if rt, err := runc.NewRunc("", r.root.RunDir()); err == nil {
			rt.Delete(ctx, id)
		}
		if err := r.root.Snaps.Remove(ctx, "ctr-"+id); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
			logrus.Warnf("container %s: its layer cannot be removed yet (%v): left for the next recovery", id, err)
			return
		}
		os.RemoveAll(r.containerDir(id))
	}
	creating := map[string]bool{}
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Name(), ".creating-")
		if !ok {
			continue
		}
		id = strings.TrimSuffix(id, ".lock")
		f, err := fsx.LockExisting(filepath.Join(r.containersDir(), e.Name()), unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			creating[id] = true
			continue // being made right now (or gone)
		}
		if _, err := os.Stat(filepath.Join(r.containerDir(id), "config.json")); err != nil {
			reap(id)
		}
		os.Remove(f.Name())
		f.Close()
	}
	for _, e := range ents {
		id := e.Name()
		if !e.IsDir() || strings.HasPrefix(id, ".") || creating[id] {
			continue
		}
		record := filepath.Join(r.containerDir(id), "config.json")
		b, err := os.ReadFile(record)
		if err != nil {
			continue // gone meanwhile
		}
		if json.Valid(b) {
			// A --rm container whose owner died (a crash, a kill -9)
			// goes, as docker removes them when it starts again.
			var c Container
			if json.Unmarshal(b, &c) == nil && c.AutoRemove && c.Status != StatusCreated && !c.Owner.Alive() {
				if err := r.removeContainer(ctx, &c); err != nil && !errors.Is(err, ErrNotFound) {
					logrus.Warnf("container %s (--rm, its owner gone) cannot be removed yet (%v): left for the next recovery", c.Name, err)
				}
			}
			continue
		}
		v, err := r.root.Snaps.Volatile("ctr-" + id)
		switch {
		case err == nil && !v:
			logrus.Warnf("container %s: its record %s is unreadable: left as it is (its layer is a kept container's)", id, record)
			continue
		case err != nil && !errors.Is(err, snapshot.ErrNotFound) && !errors.Is(err, snapshot.ErrCorrupt):
			logrus.Warnf("container %s: its record %s is unreadable and its layer's kind unknown (%v): left as it is", id, record, err)
			continue
		}
		logrus.Warnf("container %s: its record is unreadable (a crash cut its write): removing it", id)
		reap(id)
	}
	return nil
}

// lockContainers serializes creating (name checks) and removing containers.
func (r *Manager) lockContainers() (func(), error) {
	if err := os.MkdirAll(r.containersDir(), 0o700); err != nil {
		return nil, err
	}
	return fsx.LockFunc(filepath.Join(r.containersDir(), ".lock"))
}

func (r *Manager) loadContainer(id string) (*Container, error) {
	b, err := os.ReadFile(filepath.Join(r.containerDir(id), "config.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("container %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var c Container
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	return &c, nil
}

// loadAll reads every container record, as stored (not reconciled).
func (r *Manager) loadAll() ([]*Container, error) {
	ents, err := os.ReadDir(r.containersDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Container
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		c, err := r.loadContainer(e.Name())
		if err != nil {
			continue // being created or removed
		}
		out = append(out, c)
	}
	return out, nil
}

// writeRecord stores c's record. That of a container removed at exit
// (AutoRemove) is not synced: it need not outlive a crash, and
// reapUnfinished removes a container whose record a crash left unreadable.
func (r *Manager) writeRecord(c *Container) error {
	return fsx.WriteJSON(filepath.Join(r.containerDir(c.ID), "config.json"), c, 0o600, !c.AutoRemove)
}

// updateContainer applies fn to the stored record of id under its lock.
func (r *Manager) updateContainer(id string, fn func(*Container)) (*Container, error) {
	dir := r.containerDir(id)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("container %s: %w", id, ErrNotFound)
	}
	unlock, err := fsx.LockFunc(filepath.Join(dir, "lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	c, err := r.loadContainer(id)
	if err != nil {
		return nil, err
	}
	fn(c)
	if err := r.writeRecord(c); err != nil {
		return nil, err
	}
	return c, nil
}

// reconcile marks a container whose owner died without recording its exit
// as exited (exit code unknown) and deletes what the runtime has left of it.
func (r *Manager) reconcile(ctx context.Context, c *Container) *Container {
	if c.Status != StatusRunning || c.Owner.Alive() {
		return c
	}
	if rt, err := r.runtime(c); err == nil {
		rt.Delete(ctx, c.ID)
	}
	nc, err := r.updateContainer(c.ID, func(s *Container) {
		if s.Status == StatusRunning && !s.Owner.Alive() {
			s.Status, s.ExitCode, s.Finished = StatusExited, -1, time.Now().UTC()
			s.Error = "the process waiting for the container died"
		}
	})
	if err != nil {
		return c
	}
	return nc
}

// Containers returns every container, newest first, with stale states
// reconciled.
func (r *Manager) List(ctx context.Context) ([]*Container, error) {
	all, err := r.loadAll()
	if err != nil {
		return nil, err
	}
	for i, c := range all {
		all[i] = r.reconcile(ctx, c)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Created.After(all[j].Created) })
	return all, nil
}

// Container finds a container by full ID, name or unique ID prefix, with
// its state reconciled.
func (r *Manager) Get(ctx context.Context, nameOrID string) (*Container, error) {
	c, err := r.findContainer(nameOrID, false)
	if err != nil {
		return nil, err
	}
	return r.reconcile(ctx, c), nil
}

func (r *Manager) findContainer(nameOrID string, nameOnly bool) (*Container, error) {
	all, err := r.loadAll()
	if err != nil {
		return nil, err
	}
	for _, c := range all {
		if c.Name == nameOrID || (!nameOnly && c.ID == nameOrID) {
			return c, nil
		}
	}
	if !nameOnly && len(nameOrID) >= 4 {
		var m []*Container
		for _, c := range all {
			if strings.HasPrefix(c.ID, nameOrID) {
				m = append(m, c)
			}
		}
		if len(m) == 1 {
			return m[0], nil
		}
		if len(m) > 1 {
			return nil, fmt.Errorf("container id prefix %q is ambiguous", nameOrID)
		}
	}
	return nil, fmt.Errorf("container %q: %w (lbuild ps -a lists them)", nameOrID, ErrNotFound)
}

// Remove removes a container: its runtime state, its own layer
// (never the image's layers) and its record. A running container is refused
// unless force, which kills it first.
func (r *Manager) Remove(ctx context.Context, nameOrID string, force bool) error {
	c, err := r.Get(ctx, nameOrID)
	if err != nil {
		return err
	}
	if c.Running() {
		if !force {
			return fmt.Errorf("container %s is running: stop it first, or pass -f", c.Name)
		}
		rt, err := r.runtime(c)
		if err != nil {
			return err
		}
		rt.Signal(ctx, c.ID, syscall.SIGKILL, true)
		r.waitExited(ctx, c.ID, 5*time.Second)
	}
	return r.removeContainer(ctx, c)
}

func (r *Manager) removeContainer(ctx context.Context, c *Container) error {
	unlock, err := r.lockContainers()
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(r.containerDir(c.ID)); err != nil {
		return fmt.Errorf("container %s: %w", c.Name, ErrNotFound)
	}
	rt, err := r.runtime(c)
	if err != nil {
		return err
	}
	if err := rt.Delete(ctx, c.ID); err != nil {
		return err
	}
	if err := r.root.Snaps.Remove(ctx, c.Snapshot); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
		return fmt.Errorf("remove container layer: %w", err)
	}
	gone := filepath.Join(r.containersDir(), ".rm-"+c.ID)
	if err := os.Rename(r.containerDir(c.ID), gone); err != nil {
		return err
	}
	return os.RemoveAll(gone)
}

// waitExited polls the record of id until its status is exited (the owner
// recorded the exit, or died) or timeout passes; it reports whether it did.
func (r *Manager) waitExited(ctx context.Context, id string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		c, err := r.loadContainer(id)
		if err != nil {
			return true
		}
		if c = r.reconcile(ctx, c); c.Status == StatusExited {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Images maps the ID of every image some container was made from
// to the names of those containers (for rmi's check).
func (r *Manager) Images() (map[v1.Hash][]string, error) {
	all, err := r.loadAll()
	if err != nil {
		return nil, err
	}
	out := map[v1.Hash][]string{}
	for _, c := range all {
		out[c.ImageID] = append(out[c.ImageID], c.Name)
	}
	return out, nil
}
