package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/imagecfg"
	"github.com/lbuild/lbuild/internal/rootpath"
	"github.com/lbuild/lbuild/parser"
	"github.com/lbuild/lbuild/store"
)

// copySpec is a COPY or ADD after expansion. Its exported fields are what
// its cache key is made of (as JSON, so no two spellings collide).
type copySpec struct {
	Add      bool
	Srcs     []string
	contents []instructions.SourceContent // heredoc sources (keyed by content)
	Dest     string
	From     string
	Chown    string
	Chmod    string
	Exclude  []string
	Link     bool
	Parents  bool
	Unpack   *bool  // ADD --unpack
	checksum string // ADD --checksum (URL sources only)
	gitDir   *bool  // ADD --keep-git-dir (git sources only)
}

func copyFromCopy(c *instructions.CopyCommand) copySpec {
	return copySpec{Srcs: c.SourcePaths, contents: c.SourceContents, Dest: c.DestPath, From: c.From, Chown: c.Chown, Chmod: c.Chmod,
		Exclude: c.ExcludePatterns, Link: c.Link, Parents: c.Parents}
}

func copyFromAdd(c *instructions.AddCommand) copySpec {
	return copySpec{Add: true, Srcs: c.SourcePaths, contents: c.SourceContents, Dest: c.DestPath, Chown: c.Chown, Chmod: c.Chmod,
		Exclude: c.ExcludePatterns, Link: c.Link, Unpack: c.Unpack, checksum: c.Checksum, gitDir: c.KeepGitDir}
}

// keyJSON is the instruction's part of its cache key.
func (c copySpec) keyJSON() string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // strings, bools and slices always marshal
	}
	return string(b)
}

// unsupported reports a flag lbuild parses but cannot honour yet, so that it
// is refused rather than silently ignored.
func (c copySpec) unsupported() error {
	switch {
	case c.Parents:
		return errors.New("COPY --parents is not supported yet: copy each directory to its destination")
	case c.checksum != "":
		return errors.New("ADD --checksum applies to URL sources, which are not supported yet")
	case c.gitDir != nil:
		return errors.New("ADD --keep-git-dir applies to git sources, which are not supported yet")
	}
	return nil
}

func (c copySpec) text() string {
	var b strings.Builder
	if c.Add {
		b.WriteString("ADD")
	} else {
		b.WriteString("COPY")
	}
	for _, f := range [][2]string{{"from", c.From}, {"chown", c.Chown}, {"chmod", c.Chmod}} {
		if f[1] != "" {
			fmt.Fprintf(&b, " --%s=%s", f[0], f[1])
		}
	}
	for _, e := range c.Exclude {
		fmt.Fprintf(&b, " --exclude=%s", e)
	}
	if c.Link {
		b.WriteString(" --link")
	}
	if c.Unpack != nil {
		fmt.Fprintf(&b, " --unpack=%v", *c.Unpack)
	}
	for _, s := range c.Srcs {
		b.WriteString(" " + s)
	}
	for _, s := range c.contents {
		b.WriteString(" <<" + s.Path)
	}
	b.WriteString(" " + c.Dest)
	return b.String()
}

// group is one source argument resolved: a file (copied under its base name,
// or as dest itself) or a directory (its contents copied into dest).
type group struct {
	dir     bool
	name    string        // base name of a file source
	abs     string        // where the source resolved to on the host (not for heredocs)
	entries []cache.Entry // a dir's tree (Rel relative to it, "." for itself) or the one file (Rel = name)
	data    *string       // heredoc content instead of a file
	pruned  bool          // .dockerignore or --exclude left something out
}

func (b *build) dispatchCopy(ctx context.Context, st *stageState, c copySpec) error {
	text := c.text()
	mode, err := parseChmod(c.Chmod)
	if err != nil {
		return err
	}
	for _, s := range c.Srcs {
		if isURL(s) {
			if c.Add {
				return fmt.Errorf("ADD from a URL or git repository (%s) is not supported yet: download it into the build context and COPY it", s)
			}
			return fmt.Errorf("COPY cannot take a URL (%s): use ADD, or download it into the build context", s)
		}
	}
	if err := c.unsupported(); err != nil {
		return err
	}
	in := cache.Inputs{Instruction: c.keyJSON(), Workdir: st.cfg.Config.WorkingDir}
	excl, err := parser.NewIgnore(c.Exclude)
	if err != nil {
		return fmt.Errorf("--exclude: %w", err)
	}

	var srcRoot string
	var ignore = b.ignore
	switch {
	case c.From == "":
		srcRoot = b.ctxDir
	default:
		src, err := b.fromSource(ctx, c.From)
		if err != nil {
			return err
		}
		in.From = src.id
		st.note.fromKey = src.stageKey
		// What is copied is named by in.From (an image's ID, a stage's
		// content), so the stage's or image's name is no input: renaming a
		// stage, or copying the same content from another, stays cached.
		named := c
		named.From = ""
		in.Instruction = named.keyJSON()
		// The source filesystem is only needed if the step runs, or to
		// checksum a stage's selection the first time.
		var dir string
		release := func() {}
		defer func() { release() }()
		getRoot := func(ctx context.Context) (string, error) {
			if dir != "" {
				return dir, nil
			}
			if err := b.needLayers(ctx, src.layers); err != nil {
				return "", err
			}
			d, rel, err := b.root.View(ctx, src.diffIDs, src.layers, fmt.Sprintf("view-%d-%d", os.Getpid(), activeSeq.Add(1)))
			if err != nil {
				return "", err
			}
			dir, release = d, rel
			return dir, nil
		}
		if src.stage {
			sum := b.memoFromSum(src.chainID, c)
			if sum == "" {
				root, err := getRoot(ctx)
				if err != nil {
					return err
				}
				groups, err := selectSources(root, nil, excl, c.Srcs, false)
				if err != nil {
					return err
				}
				if sum, err = selectionSum(groups); err != nil {
					return err
				}
				b.rememberFromSum(src.chainID, c, sum)
			}
			in.From = "stage-content:" + sum
		}
		return b.step(ctx, st, text, in, func(ctx context.Context, root string) error {
			src, err := getRoot(ctx)
			if err != nil {
				return err
			}
			groups, err := selectSources(src, nil, excl, c.Srcs, false)
			if err != nil {
				return err
			}
			return copyInto(root, st.cfg.Config.WorkingDir, c, groups, mode)
		})
	}

	groups, err := selectSources(srcRoot, ignore, excl, c.Srcs, true)
	if err != nil {
		return err
	}
	for _, hc := range c.contents {
		data := hc.Data
		groups = append(groups, group{name: path.Base(hc.Path), data: &data})
	}
	var all []cache.Entry
	writes, known := int64(0), true
	for i, g := range groups {
		if g.data != nil {
			in.Heredocs = append(in.Heredocs, g.name+"\x00"+*g.data)
			writes += pageRound(int64(len(*g.data)))
			continue
		}
		for _, e := range g.entries {
			e.Rel = strconv.Itoa(i) + "/" + e.Rel
			all = append(all, e)
			if e.Info == nil {
				known = false
			} else {
				writes += pageRound(e.Info.Size())
			}
		}
	}
	if !c.Add && known {
		st.note.writes = writes // ADD may unpack archives: unknown
	}
	sum, files, err := cache.ChecksumSet(b.files, all)
	if err != nil {
		return fmt.Errorf("checksum sources: %w", err)
	}
	in.Sources, st.note.files = sum, files
	return b.step(ctx, st, text, in, func(ctx context.Context, root string) error {
		return copyInto(root, st.cfg.Config.WorkingDir, c, groups, mode)
	})
}

// fromSource resolves COPY --from: a stage of this Dockerfile (built first if
// needed) or an image in the store.
func (b *build) fromSource(ctx context.Context, from string) (*copyFrom, error) {
	if s, ok := b.df.Stage(from); ok {
		st, err := b.stage(ctx, s)
		if err != nil {
			return nil, err
		}
		return &copyFrom{diffIDs: st.cfg.RootFS.DiffIDs, layers: st.layers, stage: true, stageKey: st.key, chainID: st.chainID}, nil
	}
	img, err := b.root.Store.Resolve(from)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("COPY --from=%s: no stage or image of that name (stages are named with FROM … AS name)", from)
	}
	if err != nil {
		return nil, err
	}
	return &copyFrom{diffIDs: img.Config.RootFS.DiffIDs, layers: img.Layers, id: img.ID.String()}, nil
}

// copyFrom is a resolved COPY --from source.
type copyFrom struct {
	diffIDs  []v1.Hash
	layers   []v1.Descriptor
	id       string    // an image's ID (its content); "" for a stage
	stage    bool      // a stage of this Dockerfile
	stageKey cache.Key // the stage's last step (for explanations)
	chainID  string    // the stage's filesystem
}

func isURL(s string) bool {
	for _, p := range []string{"http://", "https://", "git@", "git://"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func parseChmod(s string) (os.FileMode, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o7777 {
		return 0, fmt.Errorf("invalid --chmod=%s: use an octal mode such as 755 or 0644", s)
	}
	m := os.FileMode(n & 0o777)
	if n&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if n&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if n&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m | 1<<31, nil // high bit: "set"
}

const chmodSet = os.FileMode(1 << 31)

func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// selectSources resolves COPY sources inside root. Every path is taken
// relative to root ("../x" and "/x" stay inside it) and symlinks are followed
// within it, so nothing outside root is read. In the build context,
// .dockerignore'd paths (ig, matched on context-relative paths) are treated as
// absent wherever a path leads: a symlink is checked where it resolves to
// (resolveInRoot), so none reaches what ig hides. --exclude patterns (excl)
// are matched on paths relative to each source, as BuildKit does. A wildcard that matches nothing is skipped, as in
// BuildKit; a plain path that does not exist is an error.
func selectSources(root string, ig, excl ignorer, srcs []string, isContext bool) ([]group, error) {
	var groups []group
	for _, src := range srcs {
		clean := path.Clean("/" + filepath.ToSlash(src))
		var rels []string
		if hasGlob(clean) {
			m, err := globInRoot(root, clean, ig)
			if err != nil {
				return nil, err
			}
			rels = m
		} else {
			rels = []string{strings.TrimPrefix(clean, "/")}
		}
		for _, rel := range rels {
			g, err := resolveSource(root, rel, ig, excl, isContext)
			if err != nil {
				return nil, fmt.Errorf("source %q: %w", src, err)
			}
			if !g.dir && len(g.entries) == 0 {
				continue // excluded by --exclude
			}
			groups = append(groups, g)
		}
	}
	return groups, nil
}

type ignorer interface {
	Excluded(rel string) (bool, error)
	HasExclusions() bool
}

func excluded(ig ignorer, rel string) (bool, error) {
	if ig == nil || rel == "" || rel == "." {
		return false, nil
	}
	return ig.Excluded(rel)
}

// globInRoot lists the root-relative paths matching an absolute pattern,
// component by component, skipping excluded ones.
func globInRoot(root, pattern string, ig ignorer) ([]string, error) {
	parts := strings.Split(strings.TrimPrefix(pattern, "/"), "/")
	cur := []string{""}
	for _, p := range parts {
		var next []string
		for _, dir := range cur {
			if !hasGlob(p) {
				next = append(next, path.Join(dir, p))
				continue
			}
			// A directory is listed where it resolves to, and only if
			// .dockerignore lets the build see it there.
			resolved, err := resolveInRoot(root, dir, ig)
			if err != nil {
				continue
			}
			ents, err := os.ReadDir(filepath.Join(root, filepath.FromSlash(resolved)))
			if err != nil {
				continue
			}
			for _, e := range ents {
				ok, err := path.Match(p, e.Name())
				if err != nil {
					return nil, fmt.Errorf("bad pattern %q: %w", pattern, err)
				}
				if ok {
					next = append(next, path.Join(dir, e.Name()))
				}
			}
		}
		cur = next
	}
	var out []string
	for _, rel := range cur {
		// A match that is missing where it leads (a dangling symlink, or one
		// to what .dockerignore hides) is no match.
		if _, err := resolveInRoot(root, rel, ig); err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue
			}
			return nil, err
		}
		out = append(out, rel)
	}
	sort.Strings(out)
	return out, nil
}

// resolveSource stats one source (following symlinks within root, and
// seeing only what ig lets through, as resolveInRoot does) and, for a
// directory, walks its tree in lexical order, matching ig below where the
// directory resolved to; symlinks in the tree are kept as symlinks. A group
// whose walk left anything out is marked pruned.
func resolveSource(root, rel string, ig, excl ignorer, isContext bool) (group, error) {
	if ex, err := excluded(ig, rel); err != nil {
		return group{}, err
	} else if ex && !ig.HasExclusions() {
		return group{}, errors.New("excluded by .dockerignore")
	}
	resolved, err := resolveInRoot(root, rel, ig)
	var fi os.FileInfo
	abs := filepath.Join(root, filepath.FromSlash(resolved))
	if err == nil {
		if fi, err = os.Lstat(abs); err != nil {
			err = rootpath.RelError(resolved, err)
		}
	}
	switch {
	case err == nil:
	case isHidden(err):
		return group{}, fmt.Errorf("not found in the build context: %w", err)
	case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
		return group{}, err
	case isContext:
		return group{}, errors.New("not found in the build context: check the path (it is relative to the context directory)")
	default:
		return group{}, errors.New("not found in the source image")
	}
	if !fi.IsDir() {
		name := path.Base("/" + rel)
		if ex, err := excluded(excl, name); err != nil || ex {
			return group{name: name, pruned: true}, err
		}
		return group{name: name, abs: abs, entries: []cache.Entry{{Rel: name, Abs: abs, Info: fi}}}, nil
	}
	g := group{dir: true, abs: abs}
	// Context-relative paths of what we walk, for .dockerignore: below
	// where the source resolved to.
	base := resolved
	// An excluded directory walked for "!" exceptions is sent, with its own
	// metadata, only before the first thing kept inside it (as BuildKit's
	// context walk sends such parents lazily): pending holds those walked
	// into and not sent yet, outermost first.
	var pending []cache.Entry
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(abs, p)
		if r != "." {
			r = filepath.ToSlash(r)
			for len(pending) > 0 && !strings.HasPrefix(r, pending[len(pending)-1].Rel+"/") {
				pending = pending[:len(pending)-1]
			}
			for _, m := range []struct {
				ig  ignorer
				rel string
			}{{ig, path.Join(base, r)}, {excl, r}} {
				ex, err := excluded(m.ig, m.rel)
				if err != nil {
					return err
				}
				if ex {
					g.pruned = true
					if d.IsDir() && !m.ig.HasExclusions() {
						return filepath.SkipDir
					}
					if d.IsDir() {
						info, err := d.Info()
						if err != nil {
							return err
						}
						pending = append(pending, cache.Entry{Rel: r, Abs: p, Info: info})
					}
					return nil
				}
			}
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		g.entries = append(g.entries, pending...)
		pending = pending[:0]
		g.entries = append(g.entries, cache.Entry{Rel: r, Abs: p, Info: info})
		return nil
	})
	if err == nil && len(g.entries) == 1 {
		// An excluded directory is sent only with what "!" exceptions keep
		// in it: keeping nothing, it is not in the context at all.
		if ex, _ := excluded(ig, resolved); ex {
			return group{}, fmt.Errorf("not found in the build context: %w", &hiddenError{rel: resolved})
		}
	}
	return g, err
}

// copyInto copies the groups into the filesystem at root, following
// BuildKit's destination rules: a dest ending in "/" or an existing
// directory means "into this directory"; a relative dest is relative to
// WORKDIR; missing parents are created.
func copyInto(root, workdir string, c copySpec, groups []group, mode os.FileMode) error {
	// The destination is cleaned lexically before any symlink in the image
	// is followed ("/linkdir/../x" is "/x"), keeping a trailing slash, as
	// BuildKit's pathRelativeToWorkingDir does.
	if workdir == "" {
		workdir = "/"
	}
	dest := path.Join(workdir, c.Dest)
	if path.IsAbs(c.Dest) {
		dest = path.Clean(c.Dest)
	}
	if dest != "/" && (strings.HasSuffix(c.Dest, "/") || c.Dest == "." || strings.HasSuffix(c.Dest, "/.")) {
		dest += "/"
	}
	uid, gid := uint32(0), uint32(0)
	if c.Chown != "" {
		var err error
		if uid, gid, err = imagecfg.ResolveUser(root, c.Chown, true); err != nil {
			return fmt.Errorf("--chown=%s: %w", c.Chown, err)
		}
	}
	if len(groups) == 0 {
		// Only wildcards that matched nothing: nothing is made, as in BuildKit.
		return nil
	}
	// COPY --from keeps the owners the files have in the source, unless --chown.
	keepOwner := c.From != "" && c.Chown == ""
	links := map[[2]uint64]string{} // (dev, inode) of a copied file -> its target
	destAbs, err := rootpath.Join(root, dest)
	if err != nil {
		return err
	}
	for _, g := range groups {
		// Each source is copied on its own, as BuildKit does (one copy
		// action per source): into dest if it ends in "/" or is a
		// directory by then, else as dest itself, so several files onto a
		// dest without a slash leave the last one there, as a file.
		intoDir := strings.HasSuffix(dest, "/")
		if fi, err := os.Stat(destAbs); err == nil && fi.IsDir() {
			intoDir = true
		}
		switch {
		case g.dir:
			existed := false
			if fi, err := os.Stat(destAbs); err == nil && fi.IsDir() {
				existed = true
			}
			destHost, destMade, err := mkdirAllMade(root, dest, uid, gid, c.Chown != "")
			if err != nil {
				return err
			}
			if err := copyTree(root, dest, destHost, destMade && !existed, g, existed, uid, gid, c.Chown != "", keepOwner, mode, links); err != nil {
				return err
			}
		default:
			target := dest
			if intoDir {
				target = path.Join(dest, g.name)
			}
			if err := mkdirAll(root, path.Dir(target), uid, gid, c.Chown != ""); err != nil {
				return err
			}
			if g.data != nil {
				p, err := rootpath.Join(root, target)
				if err != nil {
					return err
				}
				if err := writeFile(p, strings.NewReader(*g.data), 0o644, uid, gid, mode); err != nil {
					return err
				}
				continue
			}
			e := g.entries[0]
			if c.Add && e.Info.Mode().IsRegular() && (c.Unpack == nil || *c.Unpack) {
				ok, err := extractArchive(root, dest, e.Abs, uid, gid, c.Chown != "")
				if err != nil {
					return fmt.Errorf("ADD %s: %w", g.name, err)
				}
				if ok {
					continue
				}
			}
			eu, eg := entryOwner(e, uid, gid, keepOwner)
			if err := copyEntry(root, target, e, eu, eg, mode, links); err != nil {
				return err
			}
		}
	}
	return nil
}

// entryOwner is the owner a copied entry gets: its owner in the source
// with keepOwner (COPY --from without --chown), else uid:gid.
func entryOwner(e cache.Entry, uid, gid uint32, keepOwner bool) (uint32, uint32) {
	if keepOwner {
		if st, ok := e.Info.Sys().(*syscall.Stat_t); ok {
			return st.Uid, st.Gid
		}
	}
	return uid, gid
}

// mkdirAll creates dir and its missing parents (mode 0755) inside root;
// with chown set, the directories it creates get uid:gid.
func mkdirAll(root, dir string, uid, gid uint32, chown bool) error {
	_, _, err := mkdirAllMade(root, dir, uid, gid, chown)
	return err
}

// mkdirAllMade is mkdirAll, also returning dir's host path and whether
// this call made dir itself (so it is empty).
func mkdirAllMade(root, dir string, uid, gid uint32, chown bool) (string, bool, error) {
	dir = path.Clean("/" + dir)
	if dir == "/" {
		return root, false, nil
	}
	if err := mkdirAll(root, path.Dir(dir), uid, gid, chown); err != nil {
		return "", false, err
	}
	p, err := rootpath.Join(root, dir)
	if err != nil {
		return "", false, err
	}
	fi, err := os.Stat(p)
	if err == nil {
		if !fi.IsDir() {
			return "", false, fmt.Errorf("cannot create directory %s: a file of that name exists in the image", dir)
		}
		return p, false, nil
	}
	if err := os.Mkdir(p, 0o755); err != nil {
		if !os.IsExist(err) {
			return "", false, err
		}
		return p, false, nil
	}
	if chown {
		return p, true, os.Lchown(p, int(uid), int(gid))
	}
	return p, true, nil
}

// copyEntry copies one file, dir or symlink to target (absolute in root),
// giving it uid:gid, the source mode (or --chmod) and, but for a directory
// (whose time the caller sets once its contents are in), the source mtime.
// links (nil: none kept) maps the (device, inode) of regular files with
// several links already copied to where they went: a file whose inode is
// there becomes a hard link to it, so hard links among the sources stay
// hard links, as in BuildKit.
func copyEntry(root, target string, e cache.Entry, uid, gid uint32, chmod os.FileMode, links map[[2]uint64]string) error {
	_, _, err := copyEntryMade(root, target, e, uid, gid, chmod, links)
	return err
}

// copyEntryMade is copyEntry, also returning the host path of target and,
// for a directory, whether this call made it (so it is empty).
func copyEntryMade(root, target string, e cache.Entry, uid, gid uint32, chmod os.FileMode, links map[[2]uint64]string) (p string, made bool, err error) {
	p, err = rootpath.Join(root, target)
	if err != nil {
		return "", false, err
	}
	if target == "/" {
		p = root
	}
	fi := e.Info
	if fi.IsDir() {
		if cur, err := os.Lstat(p); err == nil && !cur.IsDir() {
			if err := os.Remove(p); err != nil {
				return "", false, err
			}
		}
		err := os.Mkdir(p, 0o755)
		if err != nil && !os.IsExist(err) {
			return "", false, err
		}
		made = err == nil
		if err := os.Lchown(p, int(uid), int(gid)); err != nil {
			return "", false, err
		}
		return p, made, os.Chmod(p, applyMode(fi.Mode(), chmod))
	}
	return p, false, copyEntryAt(p, e, uid, gid, chmod, links)
}

// copyEntryAt copies e, not a directory, to the host path p (resolved
// inside the rootfs), as copyEntry describes.
func copyEntryAt(p string, e cache.Entry, uid, gid uint32, chmod os.FileMode, links map[[2]uint64]string) error {
	fi := e.Info
	m := fi.Mode()
	switch {
	case m&os.ModeSymlink != 0:
		link, err := os.Readlink(e.Abs)
		if err != nil {
			return err
		}
		if err := removeNonDir(p); err != nil {
			return err
		}
		if err := os.Symlink(link, p); err != nil {
			return err
		}
		if err := os.Lchown(p, int(uid), int(gid)); err != nil {
			return err
		}
		// The link's own mtime, not its target's, so layers are the same bytes.
		ts := []unix.Timespec{unix.NsecToTimespec(fi.ModTime().UnixNano()), unix.NsecToTimespec(fi.ModTime().UnixNano())}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	case m.IsRegular():
		var ino [2]uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && links != nil {
			ino = [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[ino]; ok {
				if err := removeNonDir(p); err != nil {
					return err
				}
				return os.Link(first, p)
			}
			defer func() { links[ino] = p }()
		}
		// e.Abs is the file selectSources checked: never a link to follow.
		f, err := os.OpenFile(e.Abs, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		return writeFile(p, f, m, uid, gid, chmod, fi)
	default:
		return nil // devices, sockets and pipes in a context are skipped, as BuildKit does
	}
}

func applyMode(src, chmod os.FileMode) os.FileMode {
	if chmod&chmodSet != 0 {
		return chmod &^ chmodSet
	}
	return src & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

func removeNonDir(p string) error {
	cur, err := os.Lstat(p)
	if err != nil {
		return nil
	}
	if cur.IsDir() {
		return &os.PathError{Op: "replace", Path: p, Err: errors.New("a directory cannot be replaced by a file")}
	}
	return os.Remove(p)
}

// writeFile writes r to the host path p, already resolved inside the
// rootfs (replacing a file, never a dir).
func writeFile(p string, r io.Reader, m os.FileMode, uid, gid uint32, chmod os.FileMode, src ...os.FileInfo) error {
	if err := removeNonDir(p); err != nil {
		return err
	}
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := copyContents(out, r); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Lchown(p, int(uid), int(gid)); err != nil {
		return err
	}
	if err := os.Chmod(p, applyMode(m, chmod)); err != nil {
		return err
	}
	if len(src) > 0 {
		return os.Chtimes(p, src[0].ModTime(), src[0].ModTime())
	}
	return nil
}
