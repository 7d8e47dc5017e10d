package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// layerInfo is a committed snapshot as found on disk.
type layerInfo struct {
	name, parent string
	ok           bool // parent, link and fs are all present (and, indexed, its index and tar)
}

// layers reads every committed snapshot under layers/.
func (s *snapshotter) layers() (map[string]layerInfo, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	out := make(map[string]layerInfo, len(ents))
	for _, e := range ents {
		name := "sha256:" + e.Name()
		if _, err := nameHex(name); err != nil {
			continue
		}
		dir := s.layerDir(e.Name())
		l := layerInfo{name: name}
		p, perr := os.ReadFile(filepath.Join(dir, "parent"))
		_, lerr := os.Stat(filepath.Join(dir, "link"))
		_, ferr := os.Stat(filepath.Join(dir, "fs"))
		indexed, whole := isIndexed(dir)
		l.parent, l.ok = string(p), perr == nil && lerr == nil && ferr == nil && (!indexed || whole)
		out[name] = l
	}
	return out, nil
}

// activeParents returns the parents of every active snapshot on disk.
func (s *snapshotter) activeParents() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "active"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list active snapshots: %w", err)
	}
	var out []string
	for _, e := range ents {
		var meta activeMeta
		b, err := os.ReadFile(filepath.Join(s.root, "active", e.Name(), "meta.json"))
		if err == nil && json.Unmarshal(b, &meta) == nil && meta.Parent != "" {
			out = append(out, meta.Parent)
		}
	}
	return out, nil
}

func (s *snapshotter) Prune(ctx context.Context, keep func(name string) bool, dryRun bool) ([]string, int64, error) {
	// Exclusive: no active snapshot is being made on a parent meanwhile.
	g, err := lockFile(filepath.Join(s.root, "lock"), unix.LOCK_EX)
	if err != nil {
		return nil, 0, fmt.Errorf("prune snapshots: %w", err)
	}
	defer g.Close()
	all, err := s.layers()
	if err != nil {
		return nil, 0, err
	}
	wanted, err := s.activeParents()
	if err != nil {
		return nil, 0, err
	}
	for name := range all {
		if keep != nil && keep(name) {
			wanted = append(wanted, name)
		}
	}
	marked := map[string]bool{}
	for _, n := range wanted {
		for i := 0; n != "" && !marked[n] && i < maxChain; i++ {
			marked[n] = true
			n = all[n].parent
		}
	}
	depth := func(n string) int {
		d := 0
		for ; n != "" && d < maxChain; d++ {
			n = all[n].parent
		}
		return d
	}
	var doomed []string
	for name := range all {
		if !marked[name] {
			doomed = append(doomed, name)
		}
	}
	// Children first: a child is deeper than its parent.
	sort.Slice(doomed, func(i, j int) bool {
		if di, dj := depth(doomed[i]), depth(doomed[j]); di != dj {
			return di > dj
		}
		return doomed[i] < doomed[j]
	})
	var removed []string
	var freed int64
	for _, name := range doomed {
		if err := ctx.Err(); err != nil {
			return removed, freed, err
		}
		h, _ := nameHex(name)
		size := layerBytes(s.layerDir(h))
		if !dryRun {
			link, _ := os.ReadFile(filepath.Join(s.layerDir(h), "link"))
			if err := s.removeDirLocked(s.layerDir(h)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return removed, freed, fmt.Errorf("prune %s: %w", name, err)
			}
			if len(link) > 0 {
				os.Remove(filepath.Join(s.root, "l", string(link)))
			}
		}
		removed = append(removed, name)
		freed += size
	}
	return removed, freed, nil
}

func (s *snapshotter) Check() ([]Problem, error) {
	all, err := s.layers()
	if err != nil {
		return nil, err
	}
	why := map[string]string{}
	// An indexed layer is its tar: one whose bytes changed (its blob was
	// damaged: it is the same file) is not the layer its name says.
	for n, l := range all {
		if h, _ := nameHex(n); l.ok {
			if err := verifyIndexed(s.layerDir(h), n, l.parent); err != nil {
				l.ok = false
				all[n] = l
				why[n] = err.Error()
			}
		}
	}
	var bad func(n string, depth int) bool
	bad = func(n string, depth int) bool {
		l, ok := all[n]
		switch {
		case depth > maxChain:
			return false
		case !ok:
			return true
		case !l.ok:
			if why[n] == "" {
				why[n] = "incomplete (parent, link or fs missing)"
			}
			return true
		case l.parent == "":
			return false
		case bad(l.parent, depth+1):
			if _, ok := all[l.parent]; !ok {
				why[n] = "its parent " + l.parent + " is missing"
			} else {
				why[n] = "its parent " + l.parent + " is broken"
			}
			return true
		}
		return false
	}
	var out []Problem
	for n := range all {
		if bad(n, 0) {
			out = append(out, Problem{Name: n, Err: why[n]})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// removeDirLocked is removeDir for a caller holding the root lock
// exclusively (newTemp would wait for that lock): dir is renamed into tmp/
// and deleted there; an interrupted delete leaves an unlocked temp dir
// that Cleanup removes.
func (s *snapshotter) removeDirLocked(dir string) error {
	t := filepath.Join(s.root, "tmp", "rm-"+randomID(16))
	if err := os.Rename(dir, t); err != nil {
		return err
	}
	return os.RemoveAll(t)
}
