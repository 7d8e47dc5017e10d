package runc

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ociVersion is written into generated specs. Older runtimes (runc 1.1,
// crun 1.8) reject versions newer than the one they were built against, so
// we write the oldest version that has everything we use, not specs.Version.
const ociVersion = "1.0.2"

// defaultCaps is Docker's default capability set
// (moby/moby oci/caps/defaults.go).
var defaultCaps = []string{
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FSETID",
	"CAP_FOWNER",
	"CAP_MKNOD",
	"CAP_NET_RAW",
	"CAP_SETGID",
	"CAP_SETUID",
	"CAP_SETFCAP",
	"CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT",
	"CAP_KILL",
	"CAP_AUDIT_WRITE",
}

// Docker's default masked and read-only paths (moby/moby oci/defaults.go).
var (
	maskedPaths = []string{
		"/proc/asound",
		"/proc/acpi",
		"/proc/interrupts",
		"/proc/kcore",
		"/proc/keys",
		"/proc/latency_stats",
		"/proc/timer_list",
		"/proc/timer_stats",
		"/proc/sched_debug",
		"/proc/scsi",
		"/sys/firmware",
		"/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus",
		"/proc/fs",
		"/proc/irq",
		"/proc/sys",
		"/proc/sysrq-trigger",
	}
)

// etcFiles are the files generated in the bundle and bind-mounted
// read-only into the container, by destination.
var etcFiles = []string{"/etc/resolv.conf", "/etc/hosts", "/etc/hostname"}

// systemMountDests are the destinations of the standard mounts that may
// need a stub in the rootfs (the /dev sub-mounts live in the /dev tmpfs).
var systemMountDests = []string{"/proc", "/dev", "/sys"}

// normalizeMeta applies defaults and validates meta.
func normalizeMeta(meta *Meta) error {
	if len(meta.Args) == 0 {
		return fmt.Errorf("no command given")
	}
	if meta.Tty {
		return fmt.Errorf("tty is not supported yet")
	}
	if meta.Cwd == "" {
		meta.Cwd = "/"
	}
	if !path.IsAbs(meta.Cwd) {
		return fmt.Errorf("working directory %q is not absolute", meta.Cwd)
	}
	meta.Cwd = path.Clean(meta.Cwd)
	if meta.Hostname == "" {
		meta.Hostname = "lbuild"
	}
	switch meta.Network {
	case "":
		meta.Network = NetworkPrivate
	case NetworkPrivate, NetworkHost, NetworkNone:
	default:
		return fmt.Errorf("unknown network mode %q (want %q, %q or %q)", meta.Network, NetworkPrivate, NetworkHost, NetworkNone)
	}
	if err := checkPorts(meta.Network, meta.Ports); err != nil {
		return err
	}
	mounts := make([]Mount, len(meta.Mounts))
	for i, m := range meta.Mounts {
		if !path.IsAbs(m.Destination) {
			return fmt.Errorf("mount destination %q is not absolute", m.Destination)
		}
		m.Destination = path.Clean(m.Destination)
		m.Options = slices.Clone(m.Options)
		switch m.Type {
		case "bind":
			if m.Source == "" {
				return fmt.Errorf("bind mount on %s has no source", m.Destination)
			}
			if !slices.Contains(m.Options, "bind") && !slices.Contains(m.Options, "rbind") {
				m.Options = append(m.Options, "rbind")
			}
		case "tmpfs":
			if m.Source == "" {
				m.Source = "tmpfs"
			}
		case "file":
			if m.Source != "" {
				return fmt.Errorf("file mount on %s has a source: a file mount's content is its Data", m.Destination)
			}
			if m.Mode&^fs.ModePerm != 0 {
				return fmt.Errorf("file mount on %s: mode %v has more than permission bits", m.Destination, m.Mode)
			}
			if m.Mode == 0 {
				m.Mode = 0o400
			}
		default:
			return fmt.Errorf("mount on %s: unknown type %q (want \"bind\", \"tmpfs\" or \"file\")", m.Destination, m.Type)
		}
		if m.Type != "file" && (m.Data != nil || m.Mode != 0 || m.UID != 0 || m.GID != 0) {
			return fmt.Errorf("%s mount on %s: data, mode and owner are for file mounts only", m.Type, m.Destination)
		}
		mounts[i] = m
	}
	meta.Mounts = mounts
	return nil
}

// generateSpec returns the runtime spec for meta (normalized) running in
// rootfs (absolute), with the /etc files taken from bundle.
// nofile is the RLIMIT_NOFILE (soft and hard) of the process.
//
// The process gets Docker's defaults: its capability set (defaultCaps) and
// its seccomp profile (moby/profiles/seccomp, filtered for this kernel,
// architecture and capability set as dockerd does, without the x32
// architecture on kernels that cannot run it: runnableArches), unless
// meta.SeccompUnconfined.
func generateSpec(rootfs, bundle string, meta *Meta, nofile uint64) (*specs.Spec, error) {
	caps := slices.Clone(defaultCaps)
	s := &specs.Spec{
		Version: ociVersion,
		Process: &specs.Process{
			Terminal: false,
			User: specs.User{
				UID:            meta.UID,
				GID:            meta.GID,
				AdditionalGids: slices.Clone(meta.AdditionalGids),
			},
			Args: slices.Clone(meta.Args),
			Env:  slices.Clone(meta.Env),
			Cwd:  meta.Cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: caps,
				Permitted: caps,
			},
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile},
			},
			// Setuid binaries (sudo, su, ping) work as in Docker.
			NoNewPrivileges: false,
		},
		Root: &specs.Root{
			Path:     rootfs,
			Readonly: meta.ReadonlyRootfs,
		},
		Hostname: meta.Hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc",
				Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs",
				Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts",
				Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm",
				Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue",
				Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs",
				Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.MountNamespace},
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
			},
			// Devices: runc (1.1.5 measured) creates null, zero, full,
			// random, urandom and tty in /dev itself and allows them in
			// the device cgroup after this deny-all rule, as Docker does.
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths:   slices.Clone(maskedPaths),
			ReadonlyPaths: slices.Clone(readonlyPaths),
		},
	}
	switch meta.Network {
	case NetworkNone:
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	case NetworkPrivate:
		// Made and mounted there by startNet before the runtime starts.
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{
			Type: specs.NetworkNamespace, Path: path.Join(bundle, netnsFile)})
	}
	for _, dest := range etcFiles {
		if slices.ContainsFunc(meta.Mounts, func(m Mount) bool { return m.Destination == dest }) {
			continue // the caller's mount wins
		}
		s.Mounts = append(s.Mounts, specs.Mount{
			Destination: dest,
			Type:        "bind",
			Source:      path.Join(bundle, path.Base(dest)),
			Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
		})
	}
	for i, m := range meta.Mounts {
		if m.Type == "file" {
			s.Mounts = append(s.Mounts, specs.Mount{
				Destination: m.Destination,
				Type:        "bind",
				Source:      path.Join(bundle, fileMountName(i)),
				Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
			})
			continue
		}
		s.Mounts = append(s.Mounts, specs.Mount{
			Destination: m.Destination,
			Type:        m.Type,
			Source:      m.Source,
			Options:     slices.Clone(m.Options),
		})
	}
	if !meta.SeccompUnconfined {
		// The profile depends on s's bounding capabilities: set them first.
		sc, err := seccomp.GetDefaultProfile(s)
		if err != nil {
			return nil, fmt.Errorf("seccomp profile: %w", err)
		}
		sc.Architectures = runnableArches(sc.Architectures, x32Runs())
		s.Linux.Seccomp = sc
	}
	return s, nil
}

// fileMountName is the bundle file holding the content of meta.Mounts[i],
// a "file" mount.
func fileMountName(i int) string { return "mount-" + strconv.Itoa(i) }

// wantNofile is the RLIMIT_NOFILE given to processes (Docker's default).
const wantNofile = 1048576

// nofileLimit returns wantNofile, or the hard limit of this process if that
// is lower and this process cannot raise it (no CAP_SYS_RESOURCE, as in
// some sandboxes): the runtime fails to start the container otherwise.
var nofileLimit = sync.OnceValue(func() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Max >= wantNofile {
		return wantNofile
	}
	if hasCap(unix.CAP_SYS_RESOURCE) {
		return wantNofile
	}
	return rl.Max
})

// hasCap reports whether this process has capability c in its effective
// set.
func hasCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<uint(c)) != 0
		}
	}
	return false
}

// hostsFile returns the /etc/hosts content for hostname.
func hostsFile(hostname string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "127.0.0.1\tlocalhost %s\n", hostname)
	fmt.Fprintf(&b, "::1\tlocalhost ip6-localhost ip6-loopback %s\n", hostname)
	return b.String()
}
