package snapshot

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ChangeKind is the kind of a Change, as docker diff prints it.
type ChangeKind byte

// Change kinds.
const (
	ChangeAdd    ChangeKind = 'A'
	ChangeModify ChangeKind = 'C'
	ChangeDelete ChangeKind = 'D'
)

// Change is one changed path of an active snapshot.
type Change struct {
	Kind ChangeKind
	// Path is absolute in the view ("/etc/hosts").
	Path string
}

// String formats c as docker diff does: "C /etc".
func (c Change) String() string { return string(c.Kind) + " " + c.Path }

// liveActive is what the non-destructive operations need to know about an
// active snapshot, read without taking its lock.
type liveActive struct {
	activeMeta
	dir string
}

// peek reads the metadata of active snapshot key without locking it.
func (s *snapshotter) peek(key string) (*liveActive, error) {
	s.mu.Lock()
	if a := s.actives[key]; a != nil && !a.gone {
		la := &liveActive{activeMeta: a.activeMeta, dir: a.dir}
		s.mu.Unlock()
		return la, nil
	}
	s.mu.Unlock()
	la := &liveActive{dir: filepath.Join(s.root, "active", keyID(key))}
	b, err := os.ReadFile(filepath.Join(la.dir, "meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot metadata: %w", err)
	}
	if err := json.Unmarshal(b, &la.activeMeta); err != nil {
		return nil, fmt.Errorf("read snapshot metadata: %w", err)
	}
	if la.Key != key {
		return nil, fmt.Errorf("snapshot %s: %w", key, ErrNotFound)
	}
	if la.ReadOnly {
		return nil, fmt.Errorf("snapshot %s: read-only view", key)
	}
	return la, nil
}

// copyChanges computes the copy driver's changes of la against its manifest.
func copyChanges(ctx context.Context, la *liveActive) ([]change, manifest, error) {
	m, err := loadManifest(filepath.Join(la.dir, "manifest"))
	if err != nil {
		return nil, nil, err
	}
	changes, err := listCopy(ctx, m, filepath.Join(la.dir, "fs"))
	return changes, m, err
}

func (s *snapshotter) writeLive(ctx context.Context, la *liveActive, w io.Writer, noData bool) error {
	if la.Driver == DriverOverlay {
		lowers, err := s.metaLowers(la.activeMeta)
		if err != nil {
			return err
		}
		return writeUpperTarOpts(ctx, filepath.Join(la.dir, "upper"), w, false, noData, lowers...)
	}
	m, err := loadManifest(filepath.Join(la.dir, "manifest"))
	if err != nil {
		return err
	}
	return writeCopyTar(ctx, m, filepath.Join(la.dir, "fs"), w, noData, time.Time{})
}

func (s *snapshotter) DiffLive(ctx context.Context, key string, w io.Writer) error {
	la, err := s.peek(key)
	if err != nil {
		return err
	}
	if err := s.writeLive(ctx, la, w, false); err != nil {
		return fmt.Errorf("diff %s: %w", key, err)
	}
	return nil
}

func (s *snapshotter) Changes(ctx context.Context, key string) ([]Change, error) {
	la, err := s.peek(key)
	if err != nil {
		return nil, err
	}
	if la.Driver != DriverOverlay {
		// The copy driver's changes are the list; reading the entries
		// again for a tar would only add a chance to race a running
		// container.
		changes, m, err := copyChanges(ctx, la)
		if err != nil {
			return nil, fmt.Errorf("changes %s: %w", key, err)
		}
		return copyChangeList(changes, m), nil
	}
	lowers, err := s.metaLowers(la.activeMeta)
	if err != nil {
		return nil, err
	}
	lt, err := openTrees(lowers)
	if err != nil {
		return nil, err
	}
	defer lt.close()
	existed := func(rel string) bool { return inLowers(lt, rel) }

	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := s.writeLive(ctx, la, pw, true)
		pw.CloseWithError(err)
		werr <- err
	}()
	var out []Change
	tr := tar.NewReader(pr)
	var rerr error
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
		rel := strings.TrimSuffix(hdr.Name, "/")
		dir, base := path.Split(rel)
		switch {
		case base == opaqueMarker:
			continue // its directory is listed already
		case strings.HasPrefix(base, whiteoutPrefix):
			out = append(out, Change{ChangeDelete, "/" + dir + strings.TrimPrefix(base, whiteoutPrefix)})
		case existed(rel):
			out = append(out, Change{ChangeModify, "/" + rel})
		default:
			out = append(out, Change{ChangeAdd, "/" + rel})
		}
	}
	pr.CloseWithError(errors.New("stopped reading"))
	if err := <-werr; err != nil && rerr == nil {
		rerr = err
	}
	if rerr != nil {
		return nil, fmt.Errorf("changes %s: %w", key, rerr)
	}
	return out, nil
}

// copyChangeList turns copy-driver changes against manifest m into Changes,
// as Changes reads them from a tar.
func copyChangeList(changes []change, m manifest) []Change {
	var out []Change
	for _, c := range changes {
		switch c.kind {
		case changeWhiteout:
			out = append(out, Change{ChangeDelete, "/" + joinRel(c.rel, c.name)})
		case changeEntry:
			if c.st.Mode&unix.S_IFMT == unix.S_IFSOCK {
				continue // not archived
			}
			kind := ChangeAdd
			if _, ok := m[c.rel]; ok {
				kind = ChangeModify
			}
			out = append(out, Change{kind, "/" + c.rel})
		}
	}
	return out
}

// inLowers reports whether rel exists in the view made of the overlay-form
// layer dirs lowers (top first). Like overlay, it follows no symlink in them.
func inLowers(lowers nodeTree, rel string) bool {
	parts := strings.Split(rel, "/")
	for _, l := range lowers {
		if n, err := l.open(rel); err == nil {
			wh := isWhiteout(&n.st)
			n.close()
			return !wh
		}
		// Absent here: a whiteout, a non-directory or an opaque dir on the
		// way hides the lower layers.
		for i := len(parts) - 1; i >= 1; i-- {
			n, err := l.open(strings.Join(parts[:i], "/"))
			if err != nil {
				continue
			}
			hides := isWhiteout(&n.st) || !n.isDir()
			if !hides {
				o, err := n.xattr(opaqueXattr)
				hides = err == nil && string(o) == "y"
			}
			n.close()
			if hides {
				return false
			}
			break
		}
	}
	return false
}

func (s *snapshotter) Usage(ctx context.Context, key string) (int64, error) {
	la, err := s.peek(key)
	if err != nil {
		return 0, err
	}
	if la.Driver == DriverOverlay {
		return dirUsage(ctx, filepath.Join(la.dir, "upper"))
	}
	changes, _, err := copyChanges(ctx, la)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, c := range changes {
		if c.kind == changeEntry && c.st.Mode&unix.S_IFMT == unix.S_IFREG {
			n += int64(c.st.Size)
		}
	}
	return n, nil
}

// dirUsage sums the sizes of the regular files below root, each hard-linked
// file once. It follows no symlink (see node): root may be the upperdir of a
// running container.
func dirUsage(ctx context.Context, root string) (int64, error) {
	rn, err := openTree(root)
	if err != nil {
		return 0, err
	}
	defer rn.close()
	u := &usage{ctx: ctx, seen: map[uint64]bool{}}
	err = u.dir(rn)
	return u.n, err
}

type usage struct {
	ctx  context.Context
	n    int64
	seen map[uint64]bool // inodes of hard-linked files counted
}

func (u *usage) dir(dir *node) error {
	names, err := dir.names()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := u.ctx.Err(); err != nil {
			return err
		}
		n, err := dir.open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the directory was read
		}
		if err != nil {
			return err
		}
		switch {
		case n.isDir():
			err = u.dir(n)
		case n.st.Mode&unix.S_IFMT == unix.S_IFREG:
			if n.st.Nlink > 1 {
				if u.seen[n.st.Ino] {
					break
				}
				u.seen[n.st.Ino] = true
			}
			u.n += int64(n.st.Size)
		}
		n.close()
		if err != nil {
			return err
		}
	}
	return nil
}
