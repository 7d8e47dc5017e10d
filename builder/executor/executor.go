// Package executor is how the builder runs the process of a RUN step: one
// interface with one method, so the builder never sees the OCI runtime and
// tests can put a fake behind the seam.
//
// The vocabulary (Meta, Mount, ExitError) is the runtime driver's
// (runtime/runc), re-exported here so that the builder imports only this
// package. Only this package, container and system import the driver.
package executor

import (
	"context"
	"fmt"

	"github.com/lbuild/lbuild/runtime/runc"
)

// Meta describes one process run (see runc.Meta).
type Meta = runc.Meta

// Mount is an extra mount of a run (see runc.Mount).
type Mount = runc.Mount

// ExitError reports a process that exited non-zero (see runc.ExitError).
type ExitError = runc.ExitError

// ErrRuntimeNotFound is wrapped by New when the runtime binary is missing.
var ErrRuntimeNotFound = runc.ErrRuntimeNotFound

// Network modes (see runc.NetworkPrivate).
const (
	NetworkPrivate = runc.NetworkPrivate
	NetworkHost    = runc.NetworkHost
	NetworkNone    = runc.NetworkNone
)

// ParseNetwork returns the network mode a user's spelling names ("",
// "default", "host", "none"; see runc.ParseNetwork).
func ParseNetwork(s string) (string, error) { return runc.ParseNetwork(s) }

// Executor runs one process in a container.
type Executor interface {
	// Run runs meta.Args in rootfs and waits for it to exit: nil for exit
	// status 0, *ExitError for a non-zero exit, an error wrapping
	// ctx.Err() when ctx is cancelled (after killing the process), other
	// errors for setup failures. When Run returns no process of the step
	// is left and the rootfs holds nothing the runtime created for its own
	// use (mount-point stubs): only what the process wrote. Run is safe
	// for concurrent use on different rootfs directories.
	Run(ctx context.Context, rootfs string, meta Meta) error
}

var _ Executor = (*runc.Runc)(nil)

// New returns the Executor that runs each process with the OCI runtime
// binary runtime ("" = runc from PATH), keeping its state under stateDir.
// It first reaps the runtime state of lbuild processes that died, so a
// build never trips over a crashed build's leftovers.
func New(ctx context.Context, runtime, stateDir string) (Executor, error) {
	r, err := runc.NewRunc(runtime, stateDir)
	if err != nil {
		return nil, err
	}
	if err := r.Cleanup(ctx); err != nil {
		return nil, fmt.Errorf("clean up runtime state: %w", err)
	}
	return r, nil
}
