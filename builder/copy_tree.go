package builder

import (
	"os"
	"path"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lbuild/lbuild/cache"
	"github.com/lbuild/lbuild/internal/rootpath"
)

// A directory source's tree is mostly copied into directories the COPY
// itself has just made. Such a directory was empty when made, and nobody
// but this COPY writes into it, so its entries are created relative to a
// descriptor of it: no path is resolved again through the rootfs (and
// overlayfs) per file, nothing is looked up before it is created, and owner,
// mode and times are set on the new file's descriptor rather than by path.
// What lands is what copyEntry would make: the same names, contents,
// owners, modes and times. Entries whose parent the COPY did not make
// (an existing destination, a parent made for a "!" exception) go through
// copyEntry, which resolves their path inside the rootfs.
//
// The walk makes directories, symlinks and hard links in order; a made
// directory's regular files are created, and its mtime set, once the walk
// has left it, by workers that fill several directories at once (the
// order of creation shows nowhere in the layer).
//
// Safety: every name created is one component of the source walk (no "/",
// never "." or ".."), created with O_EXCL, mkdirat or symlinkat, which do
// not follow a link in the last component, inside a directory this COPY
// made and opened with O_NOFOLLOW; so no link in the image is followed and
// nothing outside the rootfs is reached.

// maxFreshDepth bounds the directories a tree's copy holds open along the
// walk's path: deeper ones are copied through copyEntry. (Directories the
// walk has left stay open until finished: at most the workers' queue.)
const maxFreshDepth = 128

// freshDir is a directory this COPY made, held open until its contents
// are in.
type freshDir struct {
	rel   string // its entry's Rel ("." for the destination itself)
	host  string // its host path (for hard links to files in it)
	fd    int
	dev   uint64    // its filesystem, for the copy_file_range memo
	mtime time.Time // the source directory's mtime, set once its files are in
	files []fileJob // its regular files, created when the walk leaves it
}

// fileJob is a regular file to create in a freshDir.
type fileJob struct {
	name, host string
	e          cache.Entry
	uid, gid   uint32
	chmod      os.FileMode
	st         *syscall.Stat_t
}

// finish creates d's files, gives d its source mtime and closes it.
func (d *freshDir) finish() error {
	defer unix.Close(d.fd)
	for _, j := range d.files {
		if err := d.createFile(j.name, j.host, j.e, j.uid, j.gid, j.chmod, j.st); err != nil {
			return err
		}
	}
	d.files = nil
	if err := futimens(d.fd, d.mtime); err != nil {
		return &os.PathError{Op: "chtimes", Path: d.host, Err: err}
	}
	return nil
}

// freshDirs is the chain of made directories the walk is in, outermost
// first; a directory the walk leaves is finished by w (inline when nil).
type freshDirs struct {
	dirs []*freshDir
	w    *dirWorkers
}

// push holds the directory this COPY just made at host (rel its entry's
// Rel), to create its entries through it.
func (s *freshDirs) push(rel, host string, mtime time.Time) error {
	if len(s.dirs) >= maxFreshDepth {
		return nil
	}
	fd, err := unix.Open(host, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: host, Err: err}
	}
	return s.hold(rel, host, fd, mtime)
}

func (s *freshDirs) hold(rel, host string, fd int, mtime time.Time) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return &os.PathError{Op: "stat", Path: host, Err: err}
	}
	s.dirs = append(s.dirs, &freshDir{rel: rel, host: host, fd: fd, dev: st.Dev, mtime: mtime})
	return nil
}

// leave pops the directories the entry rel is not inside of ("": all):
// all their entries are known (the walk is depth first), so they can be
// finished.
func (s *freshDirs) leave(rel string) error {
	for len(s.dirs) > 0 {
		d := s.dirs[len(s.dirs)-1]
		if rel != "" && (d.rel == "." || strings.HasPrefix(rel, d.rel+"/")) {
			return nil
		}
		s.dirs = s.dirs[:len(s.dirs)-1]
		if s.w != nil {
			s.w.dirs <- d
		} else if err := d.finish(); err != nil {
			return err
		}
	}
	return s.w.failed()
}

// close releases what is still held (after an error).
func (s *freshDirs) close() {
	for _, d := range s.dirs {
		unix.Close(d.fd)
	}
	s.dirs = nil
}

// parent is the held directory whose Rel is rel, or nil.
func (s *freshDirs) parent(rel string) *freshDir {
	if len(s.dirs) > 0 && s.dirs[len(s.dirs)-1].rel == rel {
		return s.dirs[len(s.dirs)-1]
	}
	return nil
}

// create makes e (a child of d) as copyEntry would, through d's descriptor;
// a directory it makes is pushed onto s. A regular file that is no hard
// link is only noted: d.finish creates it.
func (d *freshDir) create(s *freshDirs, e cache.Entry, uid, gid uint32, chmod os.FileMode, links map[[2]uint64]string) error {
	name := path.Base(e.Rel)
	host := d.host + "/" + name
	fi := e.Info
	m := fi.Mode()
	wrap := func(op string, err error) error { return &os.PathError{Op: op, Path: host, Err: err} }
	switch {
	case m.IsDir():
		if err := unix.Mkdirat(d.fd, name, 0o755); err != nil {
			return wrap("mkdir", err)
		}
		fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return wrap("open", err)
		}
		if err := unix.Fchown(fd, int(uid), int(gid)); err != nil {
			unix.Close(fd)
			return wrap("chown", err)
		}
		if err := unix.Fchmod(fd, sysMode(applyMode(m, chmod))); err != nil {
			unix.Close(fd)
			return wrap("chmod", err)
		}
		if len(s.dirs) >= maxFreshDepth {
			// Too deep to hold: its entries and time go through paths.
			unix.Close(fd)
			return nil
		}
		return s.hold(e.Rel, host, fd, fi.ModTime())
	case m&os.ModeSymlink != 0:
		link, err := os.Readlink(e.Abs)
		if err != nil {
			return err
		}
		if err := unix.Symlinkat(link, d.fd, name); err != nil {
			return wrap("symlink", err)
		}
		if err := unix.Fchownat(d.fd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return wrap("lchown", err)
		}
		// The link's own mtime, not its target's, so layers are the same bytes.
		ts := unix.NsecToTimespec(fi.ModTime().UnixNano())
		if err := unix.UtimesNanoAt(d.fd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return wrap("chtimes", err)
		}
		return nil
	case m.IsRegular():
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st != nil && st.Nlink > 1 && links != nil {
			ino := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[ino]; ok {
				if err := unix.Linkat(unix.AT_FDCWD, first, d.fd, name, 0); err != nil {
					return wrap("link", err)
				}
				return nil
			}
			defer func() { links[ino] = host }()
			// The first of its links is made now, for the others to link to.
			return d.createFile(name, host, e, uid, gid, chmod, st)
		}
		d.files = append(d.files, fileJob{name: name, host: host, e: e, uid: uid, gid: gid, chmod: chmod, st: st})
		return nil
	default:
		return nil // devices, sockets and pipes in a context are skipped, as BuildKit does
	}
}

// createFile copies the regular file e to name in d, on raw descriptors
// (no poller registration for files that cannot use it).
func (d *freshDir) createFile(name, host string, e cache.Entry, uid, gid uint32, chmod os.FileMode, st *syscall.Stat_t) error {
	// e.Abs is the file selectSources checked: never a link to follow.
	in, err := unix.Open(e.Abs, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: e.Abs, Err: err}
	}
	defer unix.Close(in)
	out, err := unix.Openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "open", Path: host, Err: err}
	}
	err = func() error {
		var src devPair
		size := e.Info.Size()
		if st != nil {
			src.src = uint64(st.Dev)
		}
		src.dst = d.dev
		if err := copyFd(out, in, src, size, e.Abs, host); err != nil {
			return err
		}
		if err := unix.Fchown(out, int(uid), int(gid)); err != nil {
			return &os.PathError{Op: "chown", Path: host, Err: err}
		}
		if err := unix.Fchmod(out, sysMode(applyMode(e.Info.Mode(), chmod))); err != nil {
			return &os.PathError{Op: "chmod", Path: host, Err: err}
		}
		if err := futimens(out, e.Info.ModTime()); err != nil {
			return &os.PathError{Op: "chtimes", Path: host, Err: err}
		}
		return nil
	}()
	if cerr := unix.Close(out); err == nil && cerr != nil {
		err = &os.PathError{Op: "close", Path: host, Err: cerr}
	}
	return err
}

// sysMode is the st_mode permission bits of m, as os.Chmod sets them.
func sysMode(m os.FileMode) uint32 {
	o := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		o |= unix.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		o |= unix.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		o |= unix.S_ISVTX
	}
	return o
}

// futimens sets the access and modification times of the file open at fd
// to t (as os.Chtimes(p, t, t) does by path).
func futimens(fd int, t time.Time) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// copyTree copies a directory group's entries into dest (host path
// destHost; fresh when this COPY just made it), as BuildKit copies a
// directory's contents: an existing destination keeps its own metadata,
// the destination made for it is 0755 (or --chmod), and every entry keeps
// its source mode, owner (keepOwner) and mtime.
func copyTree(root, dest, destHost string, fresh bool, g group, existed bool, uid, gid uint32, chown, keepOwner bool, mode os.FileMode, links map[[2]uint64]string) error {
	held := freshDirs{w: startDirWorkers()}
	defer held.close()
	defer held.w.stop()
	var dirs []cache.Entry // not held: their times are set after their contents
	made := map[string]bool{".": true}
	for _, e := range g.entries {
		if e.Rel == "." && existed {
			continue // an existing destination keeps its own metadata
		}
		if err := held.leave(e.Rel); err != nil {
			return err
		}
		if e.Info.IsDir() {
			made[e.Rel] = true
		}
		// A file a "!" exception keeps inside an excluded directory
		// has no directory entry before it.
		parent := path.Dir(e.Rel)
		if !made[parent] {
			if err := mkdirAll(root, path.Join(dest, parent), uid, gid, chown); err != nil {
				return err
			}
			made[parent] = true
		}
		if e.Rel == "." {
			// The destination directory itself is made 0755 (not
			// the source directory's mode); its contents keep theirs.
			dm := mode
			if dm&chmodSet == 0 {
				dm = 0o755 | chmodSet
			}
			if err := copyEntry(root, dest, e, uid, gid, dm, nil); err != nil {
				return err
			}
			if fresh {
				if err := held.push(".", destHost, e.Info.ModTime()); err != nil {
					return err
				}
				if held.parent(".") != nil {
					continue
				}
			}
			dirs = append(dirs, e)
			continue
		}
		eu, eg := entryOwner(e, uid, gid, keepOwner)
		if d := held.parent(parent); d != nil {
			n := len(held.dirs)
			if err := d.create(&held, e, eu, eg, mode, links); err != nil {
				return err
			}
			if e.Info.IsDir() && len(held.dirs) == n {
				dirs = append(dirs, e) // too deep to hold
			}
			continue
		}
		p, dirMade, err := copyEntryMade(root, path.Join(dest, e.Rel), e, eu, eg, mode, links)
		if err != nil {
			return err
		}
		if !e.Info.IsDir() {
			continue
		}
		if dirMade {
			n := len(held.dirs)
			if err := held.push(e.Rel, p, e.Info.ModTime()); err != nil {
				return err
			}
			if len(held.dirs) > n {
				continue
			}
		}
		dirs = append(dirs, e)
	}
	if err := held.leave(""); err != nil {
		return err
	}
	if err := held.w.stop(); err != nil {
		return err
	}
	// Creating a child moves its directory's mtime, so directories get
	// their source mtime last, deepest first: the same sources then give
	// the same layer bytes whenever they are copied.
	for i := len(dirs) - 1; i >= 0; i-- {
		p, err := rootpath.Join(root, path.Join(dest, dirs[i].Rel))
		if err != nil {
			return err
		}
		mt := dirs[i].Info.ModTime()
		if err := os.Chtimes(p, mt, mt); err != nil {
			return err
		}
	}
	return nil
}

// copyWorkers is how many directories' files a COPY creates at once: on
// a filesystem without a journal most of a small file's creation is the
// kernel's inode allocation, which runs on as many CPUs as it is given,
// one directory at a time (creating an entry locks its directory).
var copyWorkers = min(runtime.GOMAXPROCS(0), 4)

// dirWorkers finish the directories the walk has left, concurrently with
// the walk and with each other.
type dirWorkers struct {
	dirs chan *freshDir
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error // the first failure
	once sync.Once
}

// startDirWorkers starts copyWorkers workers; nil (finish directories in
// the walk) when that is one.
func startDirWorkers() *dirWorkers {
	if copyWorkers < 2 {
		return nil
	}
	w := &dirWorkers{dirs: make(chan *freshDir, 64)}
	for range copyWorkers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for d := range w.dirs {
				if w.failed() != nil {
					unix.Close(d.fd)
					continue
				}
				if err := d.finish(); err != nil {
					w.mu.Lock()
					if w.err == nil {
						w.err = err
					}
					w.mu.Unlock()
				}
			}
		}()
	}
	return w
}

// failed returns the first error a worker met.
func (w *dirWorkers) failed() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// stop waits for the workers to finish what they were given and returns
// the first error they met.
func (w *dirWorkers) stop() error {
	if w == nil {
		return nil
	}
	w.once.Do(func() {
		close(w.dirs)
		w.wg.Wait()
	})
	return w.failed()
}
