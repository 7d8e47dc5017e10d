package snapshot

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/internal/erofs"
	"github.com/lbuild/lbuild/internal/fsx"
)

// Files of an indexed layer (layers/<hex>/): the layer's tar (a hard link
// to the blob it was stored as, or, for a layer stored compressed, a file
// of its own) and the EROFS index mapping its files onto it; fs/ stays an
// empty directory (the l/ link points at it).
const (
	indexFile = "layer.erofs"
	tarFile   = "layer.tar"
)

// InMemory makes Prepare put the snapshot's upperdir on a tmpfs of at most
// limit bytes: creating many files there costs no disk inode allocation.
// Such a snapshot must be committed WithBlob (after Diff into that blob):
// its layer is then kept as the blob and an EROFS index over it (Indexes),
// mounted read-only where a view needs it, so each byte of the layer is
// written to disk once. Needs the overlay driver and Indexes.
func InMemory(limit int64) Opt {
	return func(c *prepareConfig) { c.memory, c.memoryLimit = true, limit }
}

// CommitOpt configures Commit.
type CommitOpt func(*commitConfig)

type commitConfig struct {
	blob   string
	verify bool
	name   string // set by Commit
}

// WithBlob names the file holding exactly the tar Diff wrote for the
// snapshot (its blob in an image store, on the same filesystem): an
// InMemory snapshot's layer is kept as a hard link to it. Other snapshots
// ignore it. With verify (the file was there before this Diff wrote the
// same bytes: they were not hashed as written), the file is checked
// against the snapshot's name first.
func WithBlob(path string, verify bool) CommitOpt {
	return func(c *commitConfig) { c.blob, c.verify = path, verify }
}

var (
	indexOnce sync.Once
	indexOK   bool
)

// Indexes reports whether InMemory snapshots are possible here: the overlay
// driver and a kernel that mounts EROFS indexes over layer tars (probed
// once per process).
func (s *snapshotter) Indexes() bool {
	if s.driver != DriverOverlay {
		return false
	}
	indexOnce.Do(func() {
		t, err := s.newTemp("erofs-probe-")
		if err != nil {
			return
		}
		defer t.release()
		if err := os.Mkdir(t.path, 0o700); err != nil {
			return
		}
		indexOK = erofs.Supported(t.path)
		if !indexOK {
			logrus.Debug("snapshot: EROFS indexes cannot be mounted here: layers are unpacked")
		}
	})
	return indexOK
}

// upperRel is a's upperdir, relative to the root.
func (a *active) upperRel() string {
	if a.Memory {
		return filepath.Join("active", a.id, "mem", "upper")
	}
	return filepath.Join("active", a.id, "upper")
}

// setUp makes a's view: the tmpfs of a memory snapshot, the indexed layers
// of refs mounted under lower/, and the overlay (or, for the copy driver,
// the materialized tree). lowers, if a stands on a frozen snapshot, are
// that snapshot's (refs is then nil).
func (s *snapshotter) setUp(ctx context.Context, a *active, refs []layerRef, lowers []string, memLimit int64) (string, error) {
	if a.Memory {
		mem := filepath.Join(a.dir, "mem")
		if err := os.Mkdir(mem, 0o755); err != nil {
			return "", err
		}
		opts := "mode=0755,size=" + strconv.FormatInt(memLimit, 10)
		if err := unix.Mount("tmpfs", mem, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return "", fmt.Errorf("mount tmpfs: %w", err)
		}
	}
	mountLowers := lowers
	readLowers := lowers
	if refs != nil {
		mountLowers, readLowers = nil, nil
		for i, r := range refs {
			if !r.indexed {
				rel, _ := filepath.Rel(s.root, r.fs)
				mountLowers, readLowers = append(mountLowers, r.link), append(readLowers, rel)
				continue
			}
			dir := filepath.Join(a.dir, "lower", strconv.Itoa(i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return "", err
			}
			ldir := filepath.Join(s.layerDir(r.hex))
			if err := erofs.Mount(filepath.Join(ldir, indexFile), filepath.Join(ldir, tarFile), dir); err != nil {
				return "", fmt.Errorf("mount layer %s: %w", r.name, err)
			}
			rel := filepath.Join("active", a.id, "lower", strconv.Itoa(i))
			mountLowers, readLowers = append(mountLowers, rel), append(readLowers, rel)
			refs[i].fs = dir // for the copy driver
		}
	}
	if a.Driver != DriverOverlay {
		view, err := s.materialize(ctx, a, refs)
		if err != nil {
			return "", err
		}
		// The copy driver keeps its own copy: the mounted layers can go.
		return view, s.releaseMounts(a)
	}
	a.Lowers = readLowers
	if err := s.saveMeta(a); err != nil {
		return "", err
	}
	return s.mountActive(a, mountLowers)
}

// releaseMounts unmounts what a's directory holds besides its view: the
// indexed layers under lower/ and a memory snapshot's tmpfs.
func (s *snapshotter) releaseMounts(a *active) error {
	var errs []error
	ents, _ := os.ReadDir(filepath.Join(a.dir, "lower"))
	for _, e := range ents {
		if err := unmount(filepath.Join(a.dir, "lower", e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if a.Memory {
		if err := unmount(filepath.Join(a.dir, "mem")); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// frozenLowers returns what a snapshot stacked on frozen active key stands
// on (key's upperdir, then key's lowers), counting it among the users of
// key and of the frozen snapshots key stands on. If key has been committed
// meanwhile, it returns its name instead. The caller holds stackMu.
func (s *snapshotter) frozenLowers(key string) ([]string, []*active, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name, ok := s.committedAs[key]; ok {
		return nil, nil, name, nil
	}
	p := s.actives[key]
	if p == nil || p.gone || !p.Frozen {
		return nil, nil, "", fmt.Errorf("snapshot %s is no frozen snapshot of this process: %w", key, ErrNotFound)
	}
	if len(p.Lowers)+1 > maxChain {
		return nil, nil, "", fmt.Errorf("snapshot %s: chain longer than %d layers", key, maxChain)
	}
	lowers := append([]string{p.upperRel()}, p.Lowers...)
	uses := append([]*active{p}, p.uses...)
	for _, u := range uses {
		u.users++
	}
	return lowers, uses, "", nil
}

// unuse ends a's standing on frozen snapshots (a is committed or gone); a
// retired one nobody stands on any more is deleted.
func (s *snapshotter) unuse(a *active) {
	s.mu.Lock()
	uses := a.uses
	a.uses = nil
	var done []*active
	for _, p := range uses {
		p.users--
		if p.retired && p.users == 0 {
			done = append(done, p)
		}
	}
	s.mu.Unlock()
	for _, p := range done {
		err := s.releaseMounts(p)
		if err == nil {
			err = s.removeDir(p.dir)
		}
		if err != nil {
			logrus.Debugf("snapshot: remove retired %s: %v", p.Key, err)
		}
		p.lock.Close()
	}
}

// lowerDirs returns the directories (absolute, top first) active snapshot
// a's upperdir stands on.
func (s *snapshotter) lowerDirs(a *active) ([]string, error) {
	s.mu.Lock()
	m := activeMeta{Lowers: a.Lowers, Parent: a.Parent}
	s.mu.Unlock()
	return s.metaLowers(m)
}

// metaLowers returns the directories (absolute, top first) the active
// snapshot with metadata m stands on.
func (s *snapshotter) metaLowers(m activeMeta) ([]string, error) {
	if len(m.Lowers) == 0 {
		if m.Parent == "" {
			return nil, nil
		}
		return s.LowerDirs(m.Parent) // made before snapshots kept their lowers
	}
	dirs := make([]string, len(m.Lowers))
	for i, r := range m.Lowers {
		dirs[i] = filepath.Join(s.root, r)
	}
	return dirs, nil
}

// retire ends active a once its layer is committed as name (by a, or by
// another build first): the snapshots stacked on a stand on name from now
// on, and where a's upperdir moved to (moved, relative to the root; "" if
// it stayed) replaces it in their lowers. It reports whether a is to be
// removed now (nothing stands on it: the caller does, after the lock); if
// snapshots stand on it, a's directory goes once they are gone. The caller
// holds stackMu.
func (s *snapshotter) retire(a *active, name, moved string) (bool, error) {
	s.mu.Lock()
	if s.committedAs == nil {
		s.committedAs = map[string]string{}
	}
	s.committedAs[a.Key] = name
	old := a.upperRel()
	var changed []*active
	for _, c := range s.actives {
		if c.gone || c == a {
			continue
		}
		hit := false
		if c.ParentKey == a.Key {
			c.ParentKey, c.Parent = "", name
			hit = true
		}
		if moved != "" {
			for i, l := range c.Lowers {
				if l == old {
					c.Lowers = append([]string(nil), c.Lowers...)
					c.Lowers[i] = moved
					hit = true
				}
			}
		}
		if hit {
			changed = append(changed, c)
		}
	}
	inUse := a.users > 0
	if inUse {
		a.retired, a.gone = true, true
		if s.actives[a.Key] == a {
			delete(s.actives, a.Key)
		}
	}
	s.mu.Unlock()
	for _, c := range changed {
		if err := s.saveMeta(c); err != nil {
			return false, fmt.Errorf("commit %s: %w", a.Key, err)
		}
	}
	if !inUse {
		return true, nil
	}
	if err := s.unmountActive(a); err != nil {
		return false, err
	}
	s.unuse(a)
	return false, nil
}

// commitMemory builds committed layer dir t from memory snapshot a: a hard
// link to cfg's blob (the tar Diff wrote) and an EROFS index built from it,
// or, without a blob or for a tar the index cannot map, a copy of its
// upperdir.
func (s *snapshotter) commitMemory(ctx context.Context, a *active, t string, cfg commitConfig) error {
	if err := s.unmountActive(a); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(t, "fs"), 0o755); err != nil {
		return err
	}
	if cfg.blob != "" {
		err := indexTar(t, cfg.blob)
		if err == nil && cfg.verify {
			err = verifyIndexed(t, cfg.name, a.Parent)
		}
		if err == nil {
			return nil
		}
		logrus.Debugf("snapshot %s: no index (%v): copying the layer to disk", a.Key, err)
		os.Remove(filepath.Join(t, tarFile))
		os.Remove(filepath.Join(t, indexFile))
	}
	upper := filepath.Join(s.root, a.upperRel())
	if !a.diffed {
		if err := stripOverlayXattrs(ctx, upper); err != nil {
			return err
		}
	}
	return copyLayer(ctx, upper, filepath.Join(t, "fs"))
}

// indexTar links blob into layer dir t and writes the EROFS index of it
// there; the blob is read where the index needs it, its file contents
// skipped.
func indexTar(t, blob string) error {
	if err := os.Link(blob, filepath.Join(t, tarFile)); err != nil {
		return err
	}
	f, err := os.Open(filepath.Join(t, tarFile))
	if err != nil {
		return err
	}
	defer f.Close()
	return writeIndex(t, f)
}

// writeIndex writes layer dir t's EROFS index of the tar in f (read from
// its current offset).
func writeIndex(t string, f *os.File) error {
	out, err := os.Create(filepath.Join(t, indexFile))
	if err != nil {
		return err
	}
	defer out.Close()
	bw := bufio.NewWriterSize(out, 1<<20)
	if err := erofs.Build(bw, f); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Close()
}

// mkLayerDir makes dir and its fs/ directory (empty in an indexed layer).
func mkLayerDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	return os.Mkdir(filepath.Join(dir, "fs"), 0o755)
}

// layerBytes is what removing committed layer dir frees: its files, less
// an indexed layer's tar while that is still a blob of the image store too.
func layerBytes(dir string) int64 {
	n := fsx.TreeSize(dir)
	var st unix.Stat_t
	if unix.Lstat(filepath.Join(dir, tarFile), &st) == nil && st.Nlink > 1 {
		n -= st.Size
	}
	return n
}

func (s *snapshotter) ApplyBlob(ctx context.Context, name, parent, blob string) error {
	return s.applyWith(name, parent, func(dir string) error {
		if !s.Indexes() {
			return fmt.Errorf("no EROFS indexes here: %w", errors.ErrUnsupported)
		}
		err := s.indexBlob(dir, name, parent, blob)
		if err != nil && !errors.Is(err, ErrDigestMismatch) {
			return fmt.Errorf("no index (%v): %w", err, errors.ErrUnsupported)
		}
		return err
	})
}

func (s *snapshotter) ApplyIndexed(ctx context.Context, name, parent string, r io.Reader) error {
	if !s.Indexes() {
		return s.Apply(ctx, name, parent, r)
	}
	return s.applyWith(name, parent, func(dir string) error {
		return s.indexStream(ctx, dir, name, parent, r)
	})
}

// indexStream makes dir an indexed layer of the tar read from r, written
// to dir's own tar file as it is hashed, verifying that it gives chain ID
// name over parent. A tar the index cannot map is unpacked from that file
// into dir/fs instead (the layer is then an unpacked one).
func (s *snapshotter) indexStream(ctx context.Context, dir, name, parent string, r io.Reader) error {
	if err := mkLayerDir(dir); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, tarFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	defer f.Close()
	d := sha256.New()
	if _, err := copyCtx(ctx, io.MultiWriter(f, d), r); err != nil {
		return err
	}
	if got := ChainID(parent, "sha256:"+hex.EncodeToString(d.Sum(nil))); got != name {
		return fmt.Errorf("%w: the layer's content gives chain ID %s", ErrDigestMismatch, got)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	err = writeIndex(dir, f)
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	// Not mappable (an index has limits a tar has not; or the index could
	// not be written): unpacked, as Apply would have, from the verified
	// file, as ApplyBlob's caller does.
	logrus.Debugf("layer %s: no index (%v): unpacking it", name, err)
	if err := os.Remove(filepath.Join(dir, indexFile)); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := applyTar(ctx, filepath.Join(dir, "fs"), f, false); err != nil {
		return err
	}
	return os.Remove(filepath.Join(dir, tarFile))
}

// copyCtx is io.Copy that stops with ctx's error when ctx is done.
func copyCtx(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, err := r.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, werr
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// indexBlob makes dir an indexed layer of blob, verifying that blob's
// sha256 gives chain ID name over parent.
func (s *snapshotter) indexBlob(dir, name, parent, blob string) error {
	if err := mkLayerDir(dir); err != nil {
		return err
	}
	if err := indexTar(dir, blob); err != nil {
		return err
	}
	// The linked file, not the name: nothing can swap it meanwhile.
	return verifyIndexed(dir, name, parent)
}

// verifyIndexed checks that the tar of layer dir, if it is indexed, gives
// chain ID name over parent.
func verifyIndexed(dir, name, parent string) error {
	if indexed, _ := isIndexed(dir); !indexed {
		return nil
	}
	f, err := os.Open(filepath.Join(dir, tarFile))
	if err != nil {
		return fmt.Errorf("its tar: %w", err)
	}
	defer f.Close()
	d := sha256.New()
	if _, err := io.Copy(d, f); err != nil {
		return fmt.Errorf("its tar: %w", err)
	}
	if got := ChainID(parent, "sha256:"+hex.EncodeToString(d.Sum(nil))); got != name {
		return fmt.Errorf("%w: its tar (the layer's blob, or the tar decompressed from it) is damaged: its content gives chain ID %s", ErrDigestMismatch, got)
	}
	return nil
}

// isIndexed reports whether committed layer dir holds an indexed layer,
// and whether it is whole (index and tar both there).
func isIndexed(dir string) (indexed, whole bool) {
	_, ierr := os.Lstat(filepath.Join(dir, indexFile))
	_, terr := os.Lstat(filepath.Join(dir, tarFile))
	return ierr == nil, ierr == nil && terr == nil
}
