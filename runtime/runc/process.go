// Package runc is lbuild's OCI-runtime driver: it runs a process in runc on a
// rootfs directory prepared by the caller, either to completion (Run, for a
// RUN step) or as a long-lived container (Create, Start, Exec, Signal,
// State, Delete), and reaps the runtime state of lbuild processes that died
// (Cleanup).
//
// Vocabulary:
//
//   - rootfs: the host directory that becomes "/" in the container. In
//     production it is an overlay mount of a snapshot; the driver only
//     needs a directory. The driver never mounts anything on it in the
//     host mount namespace: every mount happens inside the container's own
//     mount namespace.
//   - stub: an empty file or directory the runtime creates in the rootfs to
//     mount over (/proc, /dev, /etc/resolv.conf, a bind mount's
//     destination, ...). Stubs the runtime created are removed when Run
//     returns, so they do not end up in the layer diff.
//   - bundle: the per-run directory holding config.json and the generated
//     /etc files, under <stateDir>/bundles/<id>.
//
// Only builder/executor (RUN steps), container (containers) and system
// (crash recovery) import this package; a test enforces it.
package runc

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Meta describes one process run.
type Meta struct {
	// Args is the argv of the process, already final: the builder has
	// applied SHELL and the exec or shell form. Args[0] is looked up in
	// the PATH of Env by the runtime if it contains no slash. Must not be
	// empty.
	Args []string

	// Env is the complete environment as KEY=VALUE strings. Nothing is
	// added: if PATH is missing the runtime cannot find Args[0] by name.
	Env []string

	// Cwd is the absolute working directory in the container; "" means
	// "/". Missing directories are created in the rootfs before the run,
	// owned by UID:GID, with mode 0755 (symbolic links in the rootfs are
	// followed as the runtime would, confined to the rootfs). They are
	// kept afterwards, as Docker keeps a WORKDIR.
	Cwd string

	// UID and GID are the numeric user and primary group of the process.
	// Name resolution (USER name:group) is the builder's job.
	UID, GID uint32

	// AdditionalGids are the supplementary groups of the process.
	AdditionalGids []uint32

	// Hostname is the container's hostname (a new UTS namespace is always
	// used), also written to /etc/hostname and /etc/hosts. "" means
	// "lbuild".
	Hostname string

	// Network is NetworkPrivate (or ""), NetworkHost or NetworkNone.
	// Other values are an error.
	Network string

	// Ports are published on the host (docker run -p); only with
	// NetworkPrivate. A host port that cannot be bound (in use) makes the
	// start fail.
	Ports []PortMapping

	// Mounts are extra mounts (cache dirs, bind mounts, tmpfs, secrets),
	// applied after the standard ones in order, so a Mount may shadow
	// /etc/resolv.conf, /etc/hosts or /etc/hostname (the generated one is
	// then left out).
	Mounts []Mount

	// SeccompUnconfined runs the process without a seccomp filter
	// (Docker's --security-opt seccomp=unconfined). By default it runs
	// under Docker's default seccomp profile, which refuses, among others,
	// mount, unshare and clone of new namespaces, keyctl, add_key, bpf and
	// the kernel-module calls (as the capability set lacks CAP_SYS_ADMIN),
	// and allows what Docker allows.
	SeccompUnconfined bool

	// ReadonlyRootfs makes "/" read-only in the container (for
	// containers; builds use false).
	ReadonlyRootfs bool

	// Tty requests a terminal. Not supported yet: Run returns an error
	// if it is set.
	Tty bool

	// Stdin, Stdout and Stderr are the process's stdio. They are passed
	// to the runtime as is: an *os.File is inherited directly, any other
	// value is copied through a pipe by os/exec. nil means /dev/null.
	// The runtime writes its own error messages to Stderr as well.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Network modes (Meta.Network).
const (
	// NetworkPrivate is a network namespace of the container's own with
	// outbound access through slirp4netns (see startNet): its loopback is
	// up and its own, the host's loopback services are out of reach, and
	// /etc/resolv.conf names a resolver reachable from inside. Docker's
	// default bridge network; inbound connections come only through
	// published ports (Meta.Ports).
	NetworkPrivate = "private"
	// NetworkHost shares the host's network namespace, loopback included.
	NetworkHost = "host"
	// NetworkNone is a new network namespace holding only a loopback
	// device (which the runtime does not bring up).
	NetworkNone = "none"
)

// ParseNetwork returns the network mode a user's spelling names: "",
// "default" (BuildKit's name for the sandboxed default) and "private" are
// NetworkPrivate; "host" and "none" are themselves. Anything else is an
// error saying what to use.
func ParseNetwork(s string) (string, error) {
	switch s {
	case "", "default", NetworkPrivate:
		return NetworkPrivate, nil
	case NetworkHost, NetworkNone:
		return s, nil
	}
	return "", fmt.Errorf("unknown network %q: use default, host or none", s)
}

// Mount is an extra mount in the container.
type Mount struct {
	// Type is "bind", "tmpfs" or "file".
	//
	// "file" is a read-only file whose content is Data, owned by UID:GID
	// with mode Mode (0 means 0400), as BuildKit mounts a secret: it is
	// written into the run's bundle, which only root can enter, and is
	// gone with the bundle when Run returns, however it returns (or, after
	// lbuild was killed, at the next Cleanup). No other copy is made.
	Type string

	// Source is the host path for "bind" (a file or a directory); it is
	// ignored for "tmpfs" and must be empty for "file".
	Source string

	// Data, Mode, UID and GID are the content, permission bits and owner
	// of a "file" mount; they must be zero for other types.
	Data     []byte
	Mode     os.FileMode
	UID, GID uint32

	// Destination is the absolute path in the container. A missing
	// destination is created (as a file for a file source, else as a
	// directory) and removed again after the run if it is still empty.
	Destination string

	// Options are mount(8)-style options, e.g. "ro", "rbind",
	// "mode=0755", "size=64m". For "bind", "rbind" is added unless
	// "bind" or "rbind" is present. A "file" mount is always "ro",
	// "nosuid", "nodev", "noexec"; its Options are ignored.
	Options []string
}

// ExitError reports a process that ran and exited non-zero, or was killed
// by a signal (Code is then 128+signal, as a shell reports it).
type ExitError struct {
	// Code is the exit status.
	Code int
}

// Error implements error.
func (e *ExitError) Error() string {
	return fmt.Sprintf("process exited with code %d", e.Code)
}

// ErrRuntimeNotFound is returned (possibly wrapped) by NewRunc when the
// runtime binary is missing.
var ErrRuntimeNotFound = errors.New("runc not found in PATH: install it with apt-get install runc")
