package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/lbuild/lbuild/internal/fsx"
	"golang.org/x/sys/unix"
)

// overlayOpts are appended to every mount: they pin the features whose upper
// dirs we could not turn into a layer tar (redirects, metadata-only copy-ups).
const overlayOpts = ",index=off,redirect_dir=off,metacopy=off"

// volatileOpt makes overlay skip syncing the upper filesystem: on fsync inside
// a build step, and on unmount (which otherwise syncs the whole host
// filesystem). Layers are synced by install before they get their name; an
// active snapshot is disposable after a crash anyway, except a kept
// container's (persistent, not Volatile): that one is mounted without it, so
// that an fsync in the container reaches the disk, as in docker (its unmount
// then syncs the host filesystem, as docker's does). Kernels before 5.10
// lack it; mountOverlay then retries without it.
const volatileOpt = ",volatile"

// forceNewMountAPI makes mountOverlay use fsopen/fsconfig even for short
// option strings (tests).
var forceNewMountAPI = false

// mountActive creates upper/work/merged for a (on the tmpfs at mem/ for
// a memory snapshot) and mounts the overlay over lowers (relative to the
// root, top first).
func (s *snapshotter) mountActive(a *active, lowers []string) (string, error) {
	rel := filepath.Join("active", a.id)
	if a.Memory {
		rel = filepath.Join(rel, "mem")
	}
	for _, d := range []struct {
		name string
		mode os.FileMode
	}{{"upper", 0o755}, {"work", 0o700}, {"merged", 0o755}} {
		dir := filepath.Join(s.root, rel, d.name)
		if d.name == "merged" {
			dir = filepath.Join(a.dir, d.name)
		}
		if err := os.Mkdir(dir, d.mode); err != nil {
			return "", fmt.Errorf("create overlay dirs: %w", err)
		}
	}
	if a.Persistent && !a.Volatile {
		// A kept container's upper and work dirs must outlive a crash
		// as its metadata does.
		if err := fsx.SyncDir(filepath.Join(s.root, rel)); err != nil {
			return "", err
		}
	}
	lowers = append([]string(nil), lowers...)
	var upper, work string
	if a.ReadOnly {
		// Overlay without upperdir is read-only but wants two lowerdirs.
		lowers = append(lowers, "empty")
		if len(lowers) == 1 {
			lowers = append(lowers, filepath.Join(rel, "upper"))
		}
	} else {
		if len(lowers) == 0 {
			lowers = append(lowers, "empty")
		}
		upper, work = filepath.Join(rel, "upper"), filepath.Join(rel, "work")
	}
	merged := filepath.Join(a.dir, "merged")
	a.mounted = true
	if err := s.mountOverlay(merged, lowers, upper, work, a.ReadOnly, !(a.Persistent && !a.Volatile)); err != nil {
		a.mounted = false
		return "", err
	}
	return merged, nil
}

// mountOverlay mounts an overlay at target. lowers (top first), upper and work
// are relative to the snapshotter root; upper == "" makes a read-only overlay;
// a disposable one is volatile where the kernel has the option.
//
// The mount(2) data is limited to a page. With lowers as short relative links
// ("l/<10 chars>", 13 bytes each) about 300 layers fit; the mount is made from
// a thread whose cwd is the root. Longer option strings go through the new
// mount API (fsconfig "lowerdir+", one layer per call), which has no limit.
func (s *snapshotter) mountOverlay(target string, lowers []string, upper, work string, readOnly, disposable bool) error {
	volatile := upper != "" && disposable && !s.noVolatile.Load()
	err := s.mountOverlayOnce(target, lowers, upper, work, readOnly, volatile)
	if err != nil && volatile && errors.Is(err, unix.EINVAL) {
		if err = s.mountOverlayOnce(target, lowers, upper, work, readOnly, false); err == nil {
			s.noVolatile.Store(true)
		}
	}
	return err
}

func (s *snapshotter) mountOverlayOnce(target string, lowers []string, upper, work string, readOnly, volatile bool) error {
	opts := "lowerdir=" + strings.Join(lowers, ":")
	if upper != "" {
		opts += ",upperdir=" + upper + ",workdir=" + work
	}
	opts += overlayOpts
	if volatile {
		opts += volatileOpt
	}
	if len(opts) < os.Getpagesize() && !forceNewMountAPI {
		var flags uintptr
		if readOnly {
			flags = unix.MS_RDONLY
		}
		err := inDir(s.root, func() error {
			return unix.Mount("overlay", target, "overlay", flags, opts)
		})
		if err != nil {
			return fmt.Errorf("mount overlay: %w", err)
		}
		return nil
	}
	return s.mountOverlayNewAPI(target, lowers, upper, work, readOnly, volatile)
}

func (s *snapshotter) mountOverlayNewAPI(target string, lowers []string, upper, work string, readOnly, volatile bool) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("mount overlay: fsopen: %w", err)
	}
	defer unix.Close(fd)
	abs := func(p string) string { return filepath.Join(s.root, p) }
	set := func(k, v string) error {
		if err := unix.FsconfigSetString(fd, k, v); err != nil {
			return fmt.Errorf("mount overlay: fsconfig %s=%s: %w", k, v, err)
		}
		return nil
	}
	for _, l := range lowers {
		if err := set("lowerdir+", abs(l)); err != nil {
			return err
		}
	}
	if upper != "" {
		if err := set("upperdir", abs(upper)); err != nil {
			return err
		}
		if err := set("workdir", abs(work)); err != nil {
			return err
		}
	}
	for _, o := range strings.Split(strings.TrimPrefix(overlayOpts, ","), ",") {
		k, v, _ := strings.Cut(o, "=")
		if err := set(k, v); err != nil {
			return err
		}
	}
	if volatile {
		if err := unix.FsconfigSetFlag(fd, "volatile"); err != nil {
			return fmt.Errorf("mount overlay: fsconfig volatile: %w", err)
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("mount overlay: fsconfig create: %w", err)
	}
	var attr int
	if readOnly {
		attr = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return fmt.Errorf("mount overlay: fsmount: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount overlay: move_mount: %w", err)
	}
	return nil
}

// inDir runs fn on a dedicated OS thread whose working directory is dir. The
// thread unshares its fs attributes first, so the process cwd is untouched,
// and stays locked, so that Go discards it when the goroutine exits.
func inDir(dir string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare fs: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- fmt.Errorf("chdir: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// unmountActive unmounts a's overlay if it is (or may be) mounted.
func (s *snapshotter) unmountActive(a *active) error {
	if a.Driver != DriverOverlay || !a.mounted {
		return nil
	}
	if err := unmount(filepath.Join(a.dir, "merged")); err != nil {
		return err
	}
	a.mounted = false
	return nil
}

// unmount unmounts target; not mounted is success. A busy mount is detached.
func unmount(target string) error {
	for {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil:
			continue // stacked mounts: unmount until none is left
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmount %s: %w", target, err)
			}
			return nil
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}

// probeOverlay mounts and unmounts a small overlay under tmp/.
func (s *snapshotter) probeOverlay() error {
	t, err := s.newTemp("probe-")
	if err != nil {
		return err
	}
	defer t.release()
	for _, d := range []string{"", "lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(t.path, d), 0o700); err != nil {
			return fmt.Errorf("probe overlay: %w", err)
		}
	}
	rel, _ := filepath.Rel(s.root, t.path)
	merged := filepath.Join(t.path, "merged")
	if err := s.mountOverlay(merged, []string{filepath.Join(rel, "lower")}, filepath.Join(rel, "upper"), filepath.Join(rel, "work"), false, true); err != nil {
		return err
	}
	// A whiteout is a 0/0 char device: check the upper dir can hold one.
	if err := os.WriteFile(filepath.Join(t.path, "lower", "x"), nil, 0o600); err != nil {
		unmount(merged)
		return fmt.Errorf("probe overlay: %w", err)
	}
	err = os.Remove(filepath.Join(merged, "x"))
	if uerr := unmount(merged); err == nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("probe overlay: %w", err)
	}
	return nil
}

// overlayMemo is the file in the root remembering a successful probe.
const overlayMemo = "overlay-ok"

// overlayStamp identifies what a probe's result depends on: the running
// kernel and the filesystem holding the root ("" if unknown).
func (s *snapshotter) overlayStamp() string {
	var u unix.Utsname
	var st unix.Stat_t
	if unix.Uname(&u) != nil || unix.Stat(s.root, &st) != nil {
		return ""
	}
	return fmt.Sprintf("%s %d\n", unix.ByteSliceToString(u.Release[:]), st.Dev)
}

// overlayProbed reports whether a probe succeeded before on this kernel and
// filesystem (probeOverlay costs several directory creations and a mount
// on every open).
func (s *snapshotter) overlayProbed() bool {
	b, err := os.ReadFile(filepath.Join(s.root, overlayMemo))
	stamp := s.overlayStamp()
	return err == nil && stamp != "" && string(b) == stamp
}

// rememberOverlay records a successful probe (best effort: without the
// record the next open probes again).
func (s *snapshotter) rememberOverlay() {
	stamp := s.overlayStamp()
	if stamp == "" {
		return
	}
	p := filepath.Join(s.root, overlayMemo)
	tmp := p + ".tmp-" + randomID(8)
	if err := os.WriteFile(tmp, []byte(stamp), 0o644); err != nil {
		return
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
	}
}

// mountInfo is one line of /proc/self/mountinfo.
type mountInfo struct {
	target string
	fstype string
}

func readMountInfo() ([]mountInfo, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var mounts []mountInfo
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		m := mountInfo{target: unescapeMount(fields[4])}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				m.fstype = fields[i+1]
				break
			}
		}
		mounts = append(mounts, m)
	}
	return mounts, nil
}

// unescapeMount decodes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, ok := octal3(s[i+1 : i+4]); ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal3(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	var v int
	for _, c := range s {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	return byte(v), v < 256
}
