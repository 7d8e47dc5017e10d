package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbuild/lbuild/internal/fsx"

	"golang.org/x/sys/unix"
)

// maxChain bounds parent chains (overlayfs stacks at most 500 layers).
const maxChain = 500

type snapshotter struct {
	root       string
	driver     string
	noVolatile atomic.Bool // the kernel refused the volatile mount option

	mu      sync.Mutex
	actives map[string]*active // by key, the active snapshots this process owns
	// committedAs maps the keys of frozen snapshots this process committed
	// to their names (OverFrozen of a key committed meanwhile).
	committedAs map[string]string

	// stackMu keeps the upperdir of a frozen snapshot where it is while a
	// snapshot stacked on it is mounted or diffed (read), and Commit from
	// moving it meanwhile (write).
	stackMu sync.RWMutex
}

var _ Snapshotter = (*snapshotter)(nil)

// active is an active snapshot owned by this process.
type active struct {
	mu sync.Mutex
	activeMeta
	id   string
	dir  string
	lock *os.File // flock held until Commit or Remove

	mounted bool // overlay: merged is (or may be) mounted
	diffed  bool // overlay: upper stripped of bookkeeping; copy: layer/ built
	gone    bool // removed or committed

	manifest manifest // copy driver; nil until loaded

	// Stacking on frozen snapshots (OverFrozen), guarded by the
	// snapshotter's mu: uses are the frozen snapshots this one stands on
	// (each counts it in users until it is committed or removed); a frozen
	// snapshot committed while others stand on it is retired: its
	// directory (and what is mounted in it) stays until they are gone.
	uses    []*active
	users   int
	retired bool

	metaMu sync.Mutex // serializes saveMeta
}

// activeMeta is stored as active/<id>/meta.json.
type activeMeta struct {
	Key        string `json:"key"`
	Parent     string `json:"parent,omitempty"`
	Driver     string `json:"driver"`
	Persistent bool   `json:"persistent,omitempty"`
	// Volatile: a persistent snapshot whose metadata is not synced
	// (snapshot.Volatile).
	Volatile bool `json:"volatile,omitempty"`
	ReadOnly bool `json:"readOnly,omitempty"`
	// ParentKey is the frozen active snapshot this one is stacked on
	// (OverFrozen) until that is committed and becomes Parent.
	ParentKey string `json:"parentKey,omitempty"`
	Frozen    bool   `json:"frozen,omitempty"`
	// Lowers are the directories (relative to the root, top first) the
	// snapshot's view stands on, as mounted: committed layers' fs dirs,
	// frozen snapshots' upperdirs, indexed layers mounted in lower/<i>.
	// Empty in snapshots made before lbuild kept them: then the parent's
	// chain.
	Lowers []string `json:"lowers,omitempty"`
	// Memory puts the upperdir on a tmpfs (mem/), for a layer that is
	// stored as its tar blob and an index over it (InMemory).
	Memory bool `json:"memory,omitempty"`
}

// layerRef is one committed layer of a chain.
type layerRef struct {
	name string
	hex  string
	fs   string // absolute path of the layer's fs dir (or of a frozen upperdir)
	link string // "l/<short id>", relative to the root
	// indexed: the layer is its tar (fs/../layer.tar) and an EROFS index
	// over it (layer.erofs), mounted where a view needs it, not unpacked.
	indexed bool
}

func (s *snapshotter) Driver() string { return s.driver }

// nameHex returns the hex part of a committed snapshot name.
func nameHex(name string) (string, error) {
	h, ok := strings.CutPrefix(name, "sha256:")
	if !ok || len(h) != 64 {
		return "", fmt.Errorf("invalid snapshot name %q: want sha256:<64 hex digits>", name)
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", fmt.Errorf("invalid snapshot name %q: want sha256:<64 hex digits>", name)
		}
	}
	return h, nil
}

// keyID maps an active key to its directory name.
func keyID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

func (s *snapshotter) layerDir(h string) string { return filepath.Join(s.root, "layers", h) }

func (s *snapshotter) Exists(name string) bool {
	h, err := nameHex(name)
	if err != nil {
		return false
	}
	_, err = os.Lstat(s.layerDir(h))
	return err == nil
}

// chain returns committed name and its ancestors, top first.
func (s *snapshotter) chain(name string) ([]layerRef, error) {
	var refs []layerRef
	for name != "" {
		if len(refs) >= maxChain {
			return nil, fmt.Errorf("snapshot %s: chain longer than %d layers", refs[0].name, maxChain)
		}
		h, err := nameHex(name)
		if err != nil {
			return nil, err
		}
		dir := s.layerDir(h)
		parent, err := os.ReadFile(filepath.Join(dir, "parent"))
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("snapshot %s: %w", name, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("read parent: %w", err)
		}
		link, err := os.ReadFile(filepath.Join(dir, "link"))
		if err != nil {
			return nil, fmt.Errorf("read link: %w", err)
		}
		ref := layerRef{name: name, hex: h, fs: filepath.Join(dir, "fs"), link: "l/" + string(link)}
		if _, err := os.Lstat(filepath.Join(dir, indexFile)); err == nil {
			ref.indexed = true
		}
		refs = append(refs, ref)
		name = string(parent)
	}
	return refs, nil
}

func (s *snapshotter) LowerDirs(name string) ([]string, error) {
	refs, err := s.chain(name)
	if err != nil {
		return nil, err
	}
	dirs := make([]string, len(refs))
	for i, r := range refs {
		dirs[i] = r.fs
	}
	return dirs, nil
}

func (s *snapshotter) Prepare(ctx context.Context, key, parent string, opts ...Opt) (string, error) {
	var cfg prepareConfig
	for _, o := range opts {
		o(&cfg)
	}
	return s.prepare(ctx, key, parent, cfg, false)
}

func (s *snapshotter) View(ctx context.Context, key, parent string) (string, error) {
	return s.prepare(ctx, key, parent, prepareConfig{}, true)
}

func (s *snapshotter) prepare(ctx context.Context, key, parent string, cfg prepareConfig, readOnly bool) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if key == "" {
		return "", errors.New("prepare: empty key")
	}
	a := &active{
		activeMeta: activeMeta{Key: key, Parent: parent, Driver: s.driver, Persistent: cfg.persistent, Volatile: cfg.persistent && cfg.volatile, ReadOnly: readOnly, ParentKey: cfg.overFrozen},
		id:         keyID(key),
	}
	a.dir = filepath.Join(s.root, "active", a.id)
	if cfg.memory {
		if readOnly || cfg.persistent || s.driver != DriverOverlay || !s.Indexes() {
			return "", fmt.Errorf("prepare %s: a memory snapshot needs the overlay driver and EROFS, and cannot be a view or persistent", key)
		}
		a.Memory = true
	}
	var refs []layerRef
	var lowers []string // the frozen parent's, if over one
	if cfg.overFrozen != "" {
		if parent != "" || readOnly || cfg.persistent || s.driver != DriverOverlay {
			return "", fmt.Errorf("prepare %s: a snapshot over frozen %s must be a plain overlay one with no other parent", key, cfg.overFrozen)
		}
		// Held until a is known: the frozen upperdirs stay where lowers
		// say, and a Commit of one updates a's lowers.
		s.stackMu.RLock()
		defer s.stackMu.RUnlock()
		var err error
		var committed string
		if lowers, a.uses, committed, err = s.frozenLowers(cfg.overFrozen); err != nil {
			return "", fmt.Errorf("prepare %s: %w", key, err)
		}
		if committed != "" {
			a.ParentKey, a.Parent = "", committed
			if refs, err = s.chain(committed); err != nil {
				s.unuse(a)
				return "", fmt.Errorf("prepare %s: %w", key, err)
			}
		}
	} else if parent != "" {
		var err error
		if refs, err = s.chain(parent); err != nil {
			return "", fmt.Errorf("prepare %s: %w", key, err)
		}
	}
	if err := s.createActive(a); err != nil {
		s.unuse(a)
		return "", err
	}
	view, err := s.setUp(ctx, a, refs, lowers, cfg.memoryLimit)
	if err != nil {
		s.discard(a)
		return "", fmt.Errorf("prepare %s: %w", key, err)
	}
	if cfg.persistent {
		// Anyone may take it from here; lookup locks it per operation.
		a.lock.Close()
		return view, nil
	}
	s.mu.Lock()
	s.actives[key] = a
	s.mu.Unlock()
	return view, nil
}

// saveMeta rewrites a's meta.json; concurrent calls are written in turn,
// each with the metadata as it is then. Only a persistent snapshot's is
// synced (unless Volatile): any other is removed by the Cleanup after a
// crash, as its process is gone; an unreadable one is so too.
func (s *snapshotter) saveMeta(a *active) error {
	a.metaMu.Lock()
	defer a.metaMu.Unlock()
	s.mu.Lock()
	b, _ := json.Marshal(a.activeMeta)
	durable := a.Persistent && !a.Volatile
	s.mu.Unlock()
	if !durable {
		return fsx.WriteFileVolatile(filepath.Join(a.dir, "meta.json"), a.dir, b, 0o600)
	}
	return fsx.WriteFile(filepath.Join(a.dir, "meta.json"), a.dir, b, 0o600)
}

// createActive makes a's directory, takes its lock and writes its metadata,
// all under the shared root lock so that Cleanup never sees it half made.
func (s *snapshotter) createActive(a *active) error {
	g, err := s.sharedLock()
	if err != nil {
		return err
	}
	defer g.Close()
	if err := os.Mkdir(a.dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("prepare %s: %w", a.Key, ErrExists)
		}
		return fmt.Errorf("create active snapshot: %w", err)
	}
	a.lock, err = lockFile(filepath.Join(a.dir, "lock"), unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		os.RemoveAll(a.dir)
		return fmt.Errorf("lock active snapshot: %w", err)
	}
	b, _ := json.Marshal(a.activeMeta)
	// Under the shared root lock nobody reads it half written.
	write := func(p, _ string, b []byte, perm os.FileMode) error { return os.WriteFile(p, b, perm) }
	if a.Persistent && !a.Volatile {
		// A kept container's layer must outlive a crash, and Cleanup
		// must never take it for a dead one, even should its metadata
		// be damaged: keepFile says so on its own.
		write = fsx.WriteFile
		if err := fsx.WriteFile(filepath.Join(a.dir, keepFile), a.dir, nil, 0o600); err != nil {
			s.discard(a)
			return fmt.Errorf("write snapshot metadata: %w", err)
		}
	}
	if err := write(filepath.Join(a.dir, "meta.json"), a.dir, b, 0o600); err != nil {
		s.discard(a)
		return fmt.Errorf("write snapshot metadata: %w", err)
	}
	if a.Persistent && !a.Volatile {
		// The directory's own entry, so that the kept layer is found.
		if err := fsx.SyncDir(filepath.Dir(a.dir)); err != nil {
			s.discard(a)
			return fmt.Errorf("create active snapshot: %w", err)
		}
	}
	return nil
}

// keepFile marks the directory of an active snapshot that is persistent
// and not volatile (a kept container's layer): Cleanup leaves it alone
// whatever its meta.json holds.
const keepFile = "keep"

// lookup returns the active snapshot with key: this process's own, or one left
// on disk (a persistent snapshot, or one whose process died), which it then owns.
func (s *snapshotter) lookup(key string) (*active, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.actives[key]; a != nil {
		return a, nil
	}
	// Under the shared root lock: never while a Cleanup judges or
	// deletes the directories of dead processes (this one among them).
	g, err := s.sharedLock()
	if err != nil {
		return nil, err
	}
	defer g.Close()
	a := &active{id: keyID(key)}
	a.dir = filepath.Join(s.root, "active", a.id)
	if a.activeMeta, err = s.readMeta(key); err != nil {
		return nil, err
	}
	// Never created here: a directory a Cleanup is deleting has lost it.
	a.lock, err = fsx.LockExisting(filepath.Join(a.dir, "lock"), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, errLocked) {
		return nil, fmt.Errorf("snapshot %s: in use by another process", key)
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("lock active snapshot: %w", err)
	}
	a.mounted = a.Driver == DriverOverlay && !a.Frozen
	s.actives[key] = a
	return a, nil
}

// acquire looks up key and locks it for one operation.
func (s *snapshotter) acquire(key string, writable bool) (*active, error) {
	a, err := s.lookup(key)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.gone {
		a.mu.Unlock()
		return nil, fmt.Errorf("snapshot %s: %w", key, ErrNotFound)
	}
	if writable && a.ReadOnly {
		a.mu.Unlock()
		return nil, fmt.Errorf("snapshot %s: read-only view", key)
	}
	return a, nil
}

func (s *snapshotter) Diff(ctx context.Context, key string, w io.Writer, opts ...DiffOpt) error {
	cfg := diffOptions(opts)
	a, err := s.acquire(key, true)
	if err != nil {
		return err
	}
	defer a.mu.Unlock()
	if a.Driver == DriverOverlay {
		if err = s.writeUpper(ctx, a, w, false, cfg.clamp); err != nil {
			return fmt.Errorf("diff %s: %w", key, err)
		}
		a.diffed = true
		return nil
	}
	if err := s.diffCopy(ctx, a, w, cfg.clamp); err != nil {
		return fmt.Errorf("diff %s: %w", key, err)
	}
	return nil
}

// diffOptions applies opts (of Diff and Freeze).
func diffOptions(opts []DiffOpt) diffConfig {
	var cfg diffConfig
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// writeUpper unmounts overlay snapshot a (locked by the caller) and writes
// its upperdir as a layer tar to w (with noData, without file contents),
// settling on disk what the tar says (stripped xattrs, clamped times).
func (s *snapshotter) writeUpper(ctx context.Context, a *active, w io.Writer, noData bool, clamp time.Time) error {
	if err := s.unmountActive(a); err != nil {
		return err
	}
	// The lowers are opened before a Commit can move one (their
	// descriptors then stay good).
	s.stackMu.RLock()
	lowers, err := s.lowerDirs(a)
	var lt nodeTree
	if err == nil {
		lt, err = openTrees(lowers)
	}
	s.stackMu.RUnlock()
	if err != nil {
		return err
	}
	defer lt.close()
	tw := newTarWriter(w, true)
	tw.clamp, tw.noData, tw.lowers = clamp, noData, lt
	return tw.writeUpper(ctx, filepath.Join(s.root, a.upperRel()))
}

func (s *snapshotter) Freeze(ctx context.Context, key string, opts ...DiffOpt) error {
	cfg := diffOptions(opts)
	a, err := s.acquire(key, true)
	if err != nil {
		return err
	}
	defer a.mu.Unlock()
	if a.Driver != DriverOverlay {
		return fmt.Errorf("freeze %s: the %s driver cannot stack snapshots: %w", key, a.Driver, errors.ErrUnsupported)
	}
	if a.Frozen {
		return nil
	}
	if err := s.writeUpper(ctx, a, io.Discard, true, cfg.clamp); err != nil {
		return fmt.Errorf("freeze %s: %w", key, err)
	}
	a.diffed = true
	s.mu.Lock()
	a.Frozen = true
	s.mu.Unlock()
	if err := s.saveMeta(a); err != nil {
		return fmt.Errorf("freeze %s: %w", key, err)
	}
	return nil
}

func (s *snapshotter) Commit(ctx context.Context, name, key string, opts ...CommitOpt) error {
	cfg := commitConfig{name: name}
	for _, o := range opts {
		o(&cfg)
	}
	h, err := nameHex(name)
	if err != nil {
		return err
	}
	a, err := s.acquire(key, true)
	if err != nil {
		return err
	}
	defer a.mu.Unlock()
	s.mu.Lock()
	pk := a.ParentKey
	s.mu.Unlock()
	if pk != "" {
		return fmt.Errorf("commit %s: it stands on %s, which is not committed yet", key, pk)
	}
	if s.Exists(name) {
		return s.retireLocked(a, name, "")
	}
	if a.Parent != "" && !s.Exists(a.Parent) {
		return fmt.Errorf("commit %s: parent %s: %w", key, a.Parent, ErrNotFound)
	}
	t, err := s.newTemp("commit-")
	if err != nil {
		return err
	}
	defer t.release()
	if err := os.Mkdir(t.path, 0o700); err != nil {
		return fmt.Errorf("commit %s: %w", key, err)
	}
	// What takes time (the index, syncing the layer's files) is done
	// before the stack lock; under it only what snapshots stacked on a
	// see: its upperdir moving, and their new parent.
	switch {
	case a.Driver == DriverOverlay && a.Memory:
		// The tmpfs upperdir stays where it is (a is retired while others
		// stand on it): the layer is the blob and its index.
		if err := s.commitMemory(ctx, a, t.path, cfg); err != nil {
			return fmt.Errorf("commit %s: %w", key, err)
		}
		err := s.install(t, h, a.Parent)
		if err != nil && !errors.Is(err, errLostRace) {
			return fmt.Errorf("commit %s: %w", key, err)
		}
		return s.retireLocked(a, name, "")
	case a.Driver == DriverOverlay:
		if err := s.unmountActive(a); err != nil {
			return err
		}
		src := filepath.Join(a.dir, "upper")
		if !a.diffed {
			if err := stripOverlayXattrs(ctx, src); err != nil {
				return fmt.Errorf("commit %s: %w", key, err)
			}
		}
		if err := syncFS(src); err != nil {
			return fmt.Errorf("commit %s: %w", key, err)
		}
		s.stackMu.Lock()
		moved := filepath.Join("layers", h, "fs")
		if err := os.Rename(src, filepath.Join(t.path, "fs")); err != nil {
			s.stackMu.Unlock()
			return fmt.Errorf("commit %s: %w", key, err)
		}
		if err := s.install(t, h, a.Parent); err != nil {
			// Back where the snapshots stacked on a read it.
			if rerr := os.Rename(filepath.Join(t.path, "fs"), src); rerr != nil {
				err = errors.Join(err, rerr)
			}
			moved = ""
			if !errors.Is(err, errLostRace) {
				s.stackMu.Unlock()
				return fmt.Errorf("commit %s: %w", key, err)
			}
		}
		remove, err := s.retire(a, name, moved)
		s.stackMu.Unlock()
		if err != nil || !remove {
			return err
		}
		return s.removeActive(a)
	default:
		if !a.diffed {
			if err := s.diffCopy(ctx, a, io.Discard, time.Time{}); err != nil {
				return fmt.Errorf("commit %s: %w", key, err)
			}
		}
		if err := os.Rename(filepath.Join(a.dir, "layer"), filepath.Join(t.path, "fs")); err != nil {
			return fmt.Errorf("commit %s: %w", key, err)
		}
		err := s.install(t, h, a.Parent)
		if err != nil && !errors.Is(err, errLostRace) {
			return fmt.Errorf("commit %s: %w", key, err)
		}
		return s.retireLocked(a, name, "")
	}
}

// retireLocked is retire under the stack lock, a removed (after the lock)
// if nothing stands on it.
func (s *snapshotter) retireLocked(a *active, name, moved string) error {
	s.stackMu.Lock()
	remove, err := s.retire(a, name, moved)
	s.stackMu.Unlock()
	if err != nil || !remove {
		return err
	}
	return s.removeActive(a)
}

// errLostRace is install's report that another process installed the same
// layer first: the layer exists, t is still there for the caller.
var errLostRace = errors.New("layer installed by another process meanwhile")

// testBeforeInstall, if set (tests), runs just before install names layer h.
var testBeforeInstall func(h string)

// install turns temp dir t, holding fs/, into committed layer h over parent:
// it writes the parent and link files, gives the layer a short link in l/,
// syncs and renames t into layers/h. It returns errLostRace if another
// process installed the same layer first. The caller releases t.
func (s *snapshotter) install(t *tempDir, h, parent string) error {
	if err := os.WriteFile(filepath.Join(t.path, "parent"), []byte(parent), 0o644); err != nil {
		return fmt.Errorf("write parent: %w", err)
	}
	var link string
	for {
		link = randomID(10)
		err := os.Symlink(filepath.Join("..", "layers", h, "fs"), filepath.Join(s.root, "l", link))
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create layer link: %w", err)
		}
	}
	linkPath := filepath.Join(s.root, "l", link)
	if err := os.WriteFile(filepath.Join(t.path, "link"), []byte(link), 0o644); err != nil {
		os.Remove(linkPath)
		return fmt.Errorf("write link: %w", err)
	}
	if err := syncFS(t.path); err != nil {
		os.Remove(linkPath)
		return err
	}
	if testBeforeInstall != nil {
		testBeforeInstall(h)
	}
	if err := os.Rename(t.path, s.layerDir(h)); err != nil {
		os.Remove(linkPath)
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return errLostRace // another process made the same layer
		}
		return fmt.Errorf("rename layer into place: %w", err)
	}
	return fsx.SyncDir(filepath.Join(s.root, "layers"))
}

func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

func (s *snapshotter) Remove(ctx context.Context, key string) error {
	a, err := s.acquire(key, false)
	if err == nil {
		defer a.mu.Unlock()
		s.mu.Lock()
		users := a.users
		if users == 0 {
			a.gone = true // nothing stacks on it from now on (frozenLowers)
		}
		s.mu.Unlock()
		if users > 0 {
			return fmt.Errorf("remove %s: a snapshot stacked on it still exists", key)
		}
		return s.removeActive(a)
	}
	if errors.Is(err, ErrCorrupt) {
		return s.removeCut(key)
	}
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	if !s.Exists(key) {
		return fmt.Errorf("remove %s: %w", key, ErrNotFound)
	}
	return s.removeLayer(key)
}

// removeCut removes the directory of active snapshot key whose metadata a
// crash cut (its name is key's), unless a process holds its lock. After a
// crash nothing is mounted there; what a process that died without one left
// mounted is unmounted anyway.
func (s *snapshotter) removeCut(key string) error {
	dir := filepath.Join(s.root, "active", keyID(key))
	g, err := s.sharedLock() // as lookup: not while a Cleanup deletes it
	if err != nil {
		return err
	}
	l, err := fsx.LockExisting(filepath.Join(dir, "lock"), unix.LOCK_EX|unix.LOCK_NB)
	g.Close()
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", key, ErrNotFound) // removed meanwhile
	}
	if errors.Is(err, errLocked) {
		return fmt.Errorf("remove %s: in use by another process (removing it, or a Cleanup)", key)
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", key, err)
	}
	defer l.Close()
	// Its metadata lost, whatever it may have mounted is tried.
	unmount(filepath.Join(dir, "merged"))
	s.releaseMounts(&active{dir: dir, activeMeta: activeMeta{Memory: true}})
	if err := s.removeDir(dir); err != nil {
		return fmt.Errorf("remove %s: %w", key, err)
	}
	return nil
}

func (s *snapshotter) Volatile(key string) (bool, error) {
	m, err := s.readMeta(key)
	return m.Volatile, err
}

// readMeta reads the metadata of active snapshot key from disk: an error
// wrapping ErrNotFound if there is none (or it is another key's), ErrCorrupt
// if it cannot be parsed.
func (s *snapshotter) readMeta(key string) (activeMeta, error) {
	var m activeMeta
	b, err := os.ReadFile(filepath.Join(s.root, "active", keyID(key), "meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return m, fmt.Errorf("snapshot %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return m, fmt.Errorf("read snapshot metadata: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return activeMeta{}, fmt.Errorf("snapshot %s: %w: %v", key, ErrCorrupt, err)
	}
	if m.Key != key {
		return activeMeta{}, fmt.Errorf("snapshot %s: %w", key, ErrNotFound)
	}
	return m, nil
}

// removeActive unmounts and deletes a (locked by the caller) and forgets it.
func (s *snapshotter) removeActive(a *active) error {
	if err := s.unmountActive(a); err != nil {
		return err
	}
	if err := s.releaseMounts(a); err != nil {
		return err
	}
	if err := s.removeDir(a.dir); err != nil {
		return fmt.Errorf("remove %s: %w", a.Key, err)
	}
	s.forget(a)
	return nil
}

// discard undoes a failed Prepare.
func (s *snapshotter) discard(a *active) {
	if a.mounted {
		unmount(filepath.Join(a.dir, "merged"))
	}
	s.releaseMounts(a)
	s.unuse(a)
	s.removeDir(a.dir) // else what is left goes with the next Cleanup
	if a.lock != nil {
		a.lock.Close()
	}
}

func (s *snapshotter) forget(a *active) {
	a.lock.Close()
	s.unuse(a)
	s.mu.Lock()
	a.gone = true
	if s.actives[a.Key] == a {
		delete(s.actives, a.Key)
	}
	s.mu.Unlock()
}

// removeDir renames dir into a temp dir and deletes it there, so that no half
// deleted directory is ever visible under its name. The rename is made under
// the shared root lock, as creations are: a Cleanup (exclusive) never lists
// a directory that is then renamed away under it.
func (s *snapshotter) removeDir(dir string) error {
	g, err := s.sharedLock()
	if err != nil {
		return err
	}
	t, err := s.newTempLocked("rm-")
	if err == nil {
		if err = os.Rename(dir, t.path); err != nil {
			t.release()
		}
	}
	g.Close()
	if err != nil {
		return err
	}
	return t.release()
}

func (s *snapshotter) removeLayer(name string) error {
	h, _ := nameHex(name)
	entries, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	for _, e := range entries {
		p, err := os.ReadFile(filepath.Join(s.root, "layers", e.Name(), "parent"))
		if err == nil && string(p) == name {
			return fmt.Errorf("remove %s: snapshot has children", name)
		}
	}
	link, _ := os.ReadFile(filepath.Join(s.layerDir(h), "link"))
	if err := s.removeDir(s.layerDir(h)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", name, ErrNotFound)
		}
		return fmt.Errorf("remove %s: %w", name, err)
	}
	if len(link) > 0 {
		os.Remove(filepath.Join(s.root, "l", string(link)))
	}
	return nil
}

// toApply checks what Apply and ApplyBlob are asked: it returns name's hex,
// or done if the layer exists already (idempotent).
func (s *snapshotter) toApply(name, parent string) (string, bool, error) {
	h, err := nameHex(name)
	if err != nil {
		return "", false, err
	}
	if s.Exists(name) {
		return h, true, nil
	}
	if parent != "" && !s.Exists(parent) {
		return "", false, fmt.Errorf("apply %s: parent %s: %w", name, parent, ErrNotFound)
	}
	return h, false, nil
}

func (s *snapshotter) Apply(ctx context.Context, name, parent string, r io.Reader) error {
	return s.applyWith(name, parent, func(dir string) error {
		if err := mkLayerDir(dir); err != nil {
			return err
		}
		fs := filepath.Join(dir, "fs")
		// The name is a content address: verify the stream before the
		// layer becomes the shared snapshot of that chain ID (a layer
		// lying about its diff ID must never stand in for another
		// image's layer).
		d := sha256.New()
		tee := io.TeeReader(r, d)
		if err := applyTar(ctx, fs, tee, false); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, tee); err != nil { // the tar's trailing blocks count too
			return err
		}
		if got := ChainID(parent, "sha256:"+hex.EncodeToString(d.Sum(nil))); got != name {
			return fmt.Errorf("%w: the layer's content gives chain ID %s", ErrDigestMismatch, got)
		}
		return nil
	})
}

// applyWith makes committed snapshot name over parent: unless it exists
// (idempotent), fill makes a temp dir dir in the layer's directory form,
// which is then installed (another process's copy, installed first, wins). The
// temp dir is removed on every path.
func (s *snapshotter) applyWith(name, parent string, fill func(dir string) error) error {
	h, done, err := s.toApply(name, parent)
	if done || err != nil {
		return err
	}
	t, err := s.newTemp("apply-")
	if err != nil {
		return err
	}
	defer t.release()
	if err := fill(t.path); err != nil {
		return fmt.Errorf("apply %s: %w", name, err)
	}
	if err := s.install(t, h, parent); err != nil && !errors.Is(err, errLostRace) {
		return fmt.Errorf("apply %s: %w", name, err)
	}
	return nil
}
