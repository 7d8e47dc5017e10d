// Package snapshot stores container filesystem layers and the writable views
// that build steps run in.
//
// Vocabulary (after containerd's core/snapshots):
//
//   - A committed snapshot holds exactly ONE layer's changes, in overlay form:
//     a deleted path is a whiteout (a 0/0 character device of the same name), a
//     directory that hides everything below it is opaque (it carries the xattr
//     trusted.overlay.opaque="y"). A committed snapshot knows its parent and is
//     named by its chain ID, a "sha256:<hex>" string the caller computes (see
//     ChainID). Only committed snapshots can be parents. A committed snapshot is
//     unpacked once and shared read-only by every view stacked on it.
//   - An active snapshot has a key (a unique string the caller chooses), a
//     parent (a committed name, or "" for the empty filesystem) and a writable
//     full view: the parent chain with the active snapshot's changes on top.
//     An active snapshot belongs to the process that prepared it (it holds an
//     flock on a lock file in the snapshot's directory) until Commit or Remove;
//     Cleanup removes the ones whose process died, unless they were prepared
//     WithPersistent: those it leaves alone, except a Volatile one whose
//     metadata a crash cut (a --rm container's).
//
// Lifecycle: Prepare (or View) -> [the caller changes the view] -> Diff -> Commit
// or Remove. Apply creates a committed snapshot directly from a layer tar.
// A build may Freeze a snapshot and Prepare the next one over it (OverFrozen)
// while the frozen one's Diff and Commit run.
//
// A committed layer is unpacked (fs/ holds its files) or, made from an
// InMemory snapshot or applied with ApplyBlob or ApplyIndexed, indexed:
// kept as its layer tar (a hard link to the blob the caller stored it as,
// or, from a stream, a file of its own) and an EROFS index whose files'
// data is that tar, mounted read-only under each active snapshot that
// stands on it. Its bytes are then written to disk once, and the files of
// a COPY or a pulled layer cost no disk inodes (a COPY's are made on a
// tmpfs and dropped once the layer is committed).
//
// Two drivers implement the same contract. "overlay" mounts an overlayfs whose
// lowerdirs are the committed layers and whose upperdir collects the changes.
// "copy", for filesystems where overlay cannot be mounted, materializes the
// parent chain into a plain directory, records a manifest of what it made and
// finds the changes by comparing the tree to that manifest. Both store committed
// layers in the same overlay form, so a store can be reopened with either driver.
//
// On-disk layout under the root directory:
//
//	lock                    flock: shared while creating entries, exclusive in Cleanup
//	empty/                  an empty directory, the lowerdir of views over ""
//	layers/<hex>/fs/        one committed layer in overlay form (empty if indexed)
//	layers/<hex>/layer.tar  an indexed layer's tar: a hard link to its blob
//	layers/<hex>/layer.erofs  the EROFS index over it
//	layers/<hex>/parent     the parent's chain ID ("" for a base layer)
//	layers/<hex>/link       the short id of the layer's entry in l/
//	l/<short id>            symlink -> ../layers/<hex>/fs (keeps mount options short)
//	active/<id>/            one active snapshot; <id> is derived from its key
//	  lock                  flock held by the owning process
//	  meta.json             key, parent, driver, persistent, volatile, read-only, lowers (synced only if persistent and not volatile)
//	  keep                  empty, synced: persistent and not volatile (Cleanup never removes it)
//	  upper/ work/ merged/  overlay driver
//	  mem/upper mem/work    an InMemory snapshot's, on a tmpfs mounted at mem/
//	  lower/<i>             indexed layers of its chain, mounted
//	  fs/ manifest layer/   copy driver (view, manifest, the layer built by Diff)
//	tmp/<random>[.lock]     layers being built and directories being removed
//	overlay-ok              "auto" found overlay usable here (kernel release, st_dev)
package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
)

// ErrNotFound is returned (wrapped) for unknown keys and names.
var ErrNotFound = errors.New("snapshot not found")

// ErrExists is returned (wrapped) by Prepare and View when the key is already in use.
var ErrExists = errors.New("snapshot already exists")

// ErrCorrupt is returned (wrapped) for an active snapshot whose metadata
// cannot be read: a crash cut its unsynced write (see Volatile). Remove
// still removes it; Cleanup does too once no process holds it.
var ErrCorrupt = errors.New("snapshot metadata unreadable")

// Problem is an unusable committed snapshot found by Check.
type Problem struct {
	Name string // the snapshot's name (chain ID)
	Err  string // what is wrong with it
}

// ErrDigestMismatch is returned (wrapped) by Apply when a layer's content
// does not have the diff ID its chain ID names.
var ErrDigestMismatch = errors.New("layer content does not match its diff ID")

// Snapshotter manages committed and active snapshots under one root directory.
// It is safe for concurrent use by multiple goroutines and by multiple processes
// sharing the root directory.
type Snapshotter interface {
	// Prepare creates active snapshot key over committed parent ("" = empty
	// filesystem) and returns the directory holding its writable full view (an
	// overlay mount, or a copied tree for the copy driver). It returns ErrExists
	// if key is in use and ErrNotFound if parent does not exist.
	Prepare(ctx context.Context, key, parent string, opts ...Opt) (string, error)
	// View is Prepare for reading only (used by COPY --from): a read-only view;
	// Remove it when done. Diff and Commit fail on views. The copy driver does
	// not enforce read-only.
	View(ctx context.Context, key, parent string) (string, error)
	// Freeze ends the changes to active snapshot key: it unmounts the view
	// and settles on disk what Diff would (bookkeeping xattrs stripped,
	// times clamped with the same DiffOpts), so the layer is final before
	// its tar is written. A frozen snapshot can be the parent of another
	// active one (Prepare with OverFrozen) while its Diff and Commit run, in
	// another goroutine of the same process: that is how a build starts a
	// step before the layer of the step before is stored. Diff must be given
	// the same options as Freeze. The copy driver does not freeze: it returns
	// an error wrapping errors.ErrUnsupported.
	Freeze(ctx context.Context, key string, opts ...DiffOpt) error
	// Diff writes the active snapshot's changes relative to its parent to w as
	// an uncompressed OCI layer tar: entries in a stable order (sorted by name
	// within each directory, parents before children), numeric uid/gid, mtimes
	// at second precision, whiteouts as ".wh.<name>", opaque directories as
	// "<dir>/.wh..wh..opq", xattrs as PAX records without trusted.overlay.*.
	// It unmounts the view first; after Diff only Commit or Remove are valid.
	// WithSourceDateEpoch clamps the layer's times, in the tar and in the
	// layer Commit then stores.
	Diff(ctx context.Context, key string, w io.Writer, opts ...DiffOpt) error
	// Commit turns active key into committed snapshot name (whose parent is
	// the active snapshot's parent); containerd's argument order, name first. If name exists already (another build made it),
	// the active one is discarded and Commit returns nil. Atomic: the layer is
	// built under tmp/ and renamed into place.
	//
	// An InMemory snapshot's layer is kept as the blob named WithBlob and
	// an EROFS index over it (or, without one, copied to disk).
	Commit(ctx context.Context, name, key string, opts ...CommitOpt) error
	// Indexes reports whether Prepare can make InMemory snapshots here.
	Indexes() bool
	// Remove discards an active snapshot (unmounting it) or a committed one. A
	// committed snapshot that is the parent of another cannot be removed.
	Remove(ctx context.Context, key string) error
	// Volatile reports whether active snapshot key was prepared Volatile
	// (a container removed when it exits). It returns an error wrapping
	// ErrNotFound if there is no such snapshot and ErrCorrupt if its
	// metadata is unreadable.
	Volatile(key string) (bool, error)
	// Exists reports whether committed snapshot name exists.
	Exists(name string) bool
	// Apply unpacks an uncompressed OCI layer tar read from r as committed
	// snapshot name over parent. Idempotent (name exists -> return nil without
	// reading). Built in a temp dir, renamed into place; if another process wins
	// the rename, Apply discards its copy and returns nil. Entries that would
	// land outside the layer (absolute paths, "..", symlinks leading out) are
	// rejected with an error. name is verified: unless
	// ChainID(parent, sha256 of all of r) == name, Apply installs nothing
	// and returns an error wrapping ErrDigestMismatch.
	Apply(ctx context.Context, name, parent string, r io.Reader) error
	// ApplyBlob is Apply of the uncompressed layer tar in file blob (a blob
	// of an image store, on the same filesystem), keeping the layer as a
	// hard link to blob and an EROFS index over it instead of unpacking
	// it. name is verified as Apply does. Where that cannot be (no Indexes,
	// a tar the index cannot map, another filesystem), it installs nothing
	// and returns an error wrapping errors.ErrUnsupported: Apply it then.
	ApplyBlob(ctx context.Context, name, parent, blob string) error
	// ApplyIndexed is Apply keeping the layer as the tar read from r,
	// written once to a file of the layer's own, with an EROFS index over
	// it instead of unpacking it (for a layer stored compressed: its tar
	// exists nowhere else). Where the kernel mounts no indexes (Indexes),
	// or for a tar the index cannot map, it unpacks the tar as Apply does.
	// name is verified as Apply does.
	ApplyIndexed(ctx context.Context, name, parent string, r io.Reader) error
	// DiffLive writes the same layer tar as Diff but leaves the active
	// snapshot as it was: the view stays mounted and nothing in it is
	// modified (bookkeeping xattrs are left out of the tar, not stripped),
	// so it may run while a container uses the view, from any process,
	// without taking the snapshot's lock. Files written meanwhile may be
	// caught half way, as with docker commit --pause=false.
	DiffLive(ctx context.Context, key string, w io.Writer) error
	// Changes lists what active snapshot key changed relative to its
	// parent, as docker diff does: added (A), changed (C) and deleted (D)
	// paths, parents before children. A directory is listed as changed when
	// something in it changed. Non-destructive, like DiffLive.
	Changes(ctx context.Context, key string) ([]Change, error)
	// Usage returns the bytes of file content the active snapshot key holds
	// of its own (the overlay upperdir; for the copy driver, the changed
	// files), not counting its parent layers.
	Usage(ctx context.Context, key string) (int64, error)
	// LowerDirs returns the fs directories of committed name and its
	// ancestors (top layer first). An indexed layer's is empty: a view
	// mounts the layer's index where it needs it.
	LowerDirs(name string) ([]string, error)
	// Cleanup unmounts and removes active snapshots left by processes that died
	// (crash recovery), stale temp dirs, and overlay mounts under the root that
	// belong to no live snapshot. It does not touch active snapshots of live
	// processes, nor persistent ones.
	Cleanup(ctx context.Context) error
	// Prune removes the committed snapshots nobody needs: those keep does
	// not want that are neither the ancestor of one it wants nor the parent
	// (or an ancestor of the parent) of an active snapshot. Children go
	// before their parents, each removal atomic (renamed away, then
	// deleted), so an interrupted Prune leaves a valid tree. It returns
	// the names removed (or, with dryRun, that would be) and their bytes.
	// It holds the root lock, so no active snapshot is made meanwhile.
	Prune(ctx context.Context, keep func(name string) bool, dryRun bool) ([]string, int64, error)
	// Check reports the committed snapshots that are unusable: incomplete
	// (no parent, link or fs entry), or standing on a missing or unusable
	// parent.
	Check() ([]Problem, error)
	// Driver returns "overlay" or "copy".
	Driver() string
}

// Opt configures Prepare.
type Opt func(*prepareConfig)

type prepareConfig struct {
	persistent  bool
	volatile    bool
	overFrozen  string
	memory      bool
	memoryLimit int64
}

// OverFrozen makes Prepare stack the new active snapshot on frozen active
// snapshot key (see Freeze) instead of on a committed parent; Prepare's
// parent argument must then be "". Until key is committed, the new
// snapshot can be changed, frozen, diffed and removed but not committed;
// when key is committed (as name), name becomes its parent. A snapshot
// stacked on key keeps key's files readable until it is unmounted (by its
// own Freeze, Diff or Remove), even if key's Commit finds its name already
// taken; Remove of key fails while such a snapshot is mounted.
func OverFrozen(key string) Opt {
	return func(c *prepareConfig) { c.overFrozen = key }
}

// WithPersistent makes the active snapshot survive its process (containers):
// Cleanup leaves it alone; another process may later Diff, Commit or Remove it.
// Prepare does not keep holding its lock, so another process may do so even
// while the preparing process still runs.
func WithPersistent() Opt {
	return func(c *prepareConfig) { c.persistent = true }
}

// Volatile writes a persistent snapshot's metadata without syncing it, as
// every other active snapshot's is (their process ends with a crash): a
// crash may leave it unreadable, and Cleanup then removes the snapshot. For
// containers removed when they exit (run --rm).
func Volatile() Opt {
	return func(c *prepareConfig) { c.volatile = true }
}

// DiffOpt configures Diff.
type DiffOpt func(*diffConfig)

type diffConfig struct {
	clamp time.Time // zero: file times as they are
}

// WithSourceDateEpoch clamps the file times of the layer Diff writes to t
// (SOURCE_DATE_EPOCH, as reproducible-builds.org defines it): an entry whose
// mtime is later than t is written with t, and the committed layer gets t on
// disk too, so that a view of it reads as the layer tar does wherever it is
// unpacked; earlier times stay as they are. The zero time clamps nothing.
// Both drivers write the same bytes for the same changes.
func WithSourceDateEpoch(t time.Time) DiffOpt {
	return func(c *diffConfig) { c.clamp = t }
}

// Driver names.
const (
	DriverOverlay = "overlay"
	DriverCopy    = "copy"
	DriverAuto    = "auto"
)

// New opens (creating) a snapshotter rooted at dir. driver is "overlay", "copy"
// or "auto"; "auto" probes an overlay mount in dir once and falls back to
// "copy" if it fails (logged at debug level). A successful probe is
// remembered in the root (overlay-ok, keyed by the kernel release and the
// root's filesystem), so later opens on the same kernel and filesystem skip
// it; a failed one is not, so a host that gains overlay support uses it.
func New(dir, driver string) (Snapshotter, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot root: %w", err)
	}
	for _, d := range []string{"", "layers", "active", "tmp", "l", "empty"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o700); err != nil {
			return nil, fmt.Errorf("create snapshot root: %w", err)
		}
	}
	// Layers are read by container processes running as other users.
	for _, d := range []string{"", "layers", "l", "empty"} {
		if err := os.Chmod(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("create snapshot root: %w", err)
		}
	}
	s := &snapshotter{root: abs, actives: map[string]*active{}}
	switch driver {
	case DriverOverlay, DriverCopy:
		s.driver = driver
	case DriverAuto, "":
		if s.overlayProbed() {
			s.driver = DriverOverlay
		} else if err := s.probeOverlay(); err != nil {
			logrus.WithError(err).Debug("snapshot: overlay not usable, falling back to the copy driver")
			s.driver = DriverCopy
		} else {
			s.driver = DriverOverlay
			s.rememberOverlay()
		}
	default:
		return nil, fmt.Errorf("unknown snapshot driver %q", driver)
	}
	return s, nil
}

// ChainID returns the chain ID of a layer with diffID on top of parent chain
// ID ("" for the first): parent=="" -> diffID; else
// "sha256:"+hex(sha256(parent + " " + diffID)), as OCI image-spec identity.ChainID.
func ChainID(parent, diffID string) string {
	if parent == "" {
		return diffID
	}
	sum := sha256.Sum256([]byte(parent + " " + diffID))
	return "sha256:" + hex.EncodeToString(sum[:])
}
