// Package transfer moves images between lbuild's local store
// (store) and the outside world: registries (Pull, Push) and archives
// (Save, Load, SaveOCILayout). Every move carries only what the other side
// lacks.
//
// Vocabulary (as in go-containerregistry's v1.Layer):
//
//   - A layer's Digest is the sha256 of the blob as stored or sent, which may
//     be compressed; its DiffID is the sha256 of the uncompressed tar.
//   - lbuild's own layers are stored uncompressed (media type
//     application/vnd.oci.image.layer.v1.tar), so for them Digest == DiffID.
//     They are compressed when they leave the machine (Push, and Save with
//     WithCompression), once per layer and Compression: the compressed blob
//     is kept in the store and the mapping (DiffID, Compression) -> Digest is
//     persisted in the store's metadata, so a second push or save neither
//     recompresses nor re-uploads. Push compresses a layer while it uploads
//     it (one pass, the store blob kept only if the upload succeeds).
//   - Pulled layers keep the registry's bytes and media types, so pushing
//     them back sends identical digests.
//
// Every image that comes in (Pull, Load) is checked once, at the door, before
// it is tagged: see ErrInvalidImage and ErrDigestMismatch.
//
// Besides images, the package keeps three kinds of records through the
// store's metadata calls (store.Store.Meta, SetMeta): "compressed" (the
// mapping above), "sources" (for each blob, the repositories it is known to
// exist in, used for cross-repository mounts on push) and "diffids" (the
// diff ID of each compressed layer blob, computed as it came in or was
// made). All are caches: deleting them costs time, never correctness.
package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrDigestMismatch is returned (wrapped) when received bytes do not hash to
// the digest they were announced with (nothing is stored in that case), and
// when a layer's uncompressed content does not hash to the diff ID its
// image's config claims for it (the image is refused).
var ErrDigestMismatch = errors.New("digest mismatch")

// DefaultJobs is how many blobs move in parallel unless WithJobs says
// otherwise.
const DefaultJobs = 4

// Opt configures Pull, Push, Save and Load. Options that do not apply to an
// operation are ignored by it.
type Opt func(*config) error

type config struct {
	platform    v1.Platform
	insecure    map[string]bool
	progress    io.Writer
	compression Compression
	compressSet bool // WithCompression was given
	keychain    authn.Keychain
	transport   http.RoundTripper
	jobs        int
	remoteExtra []remote.Option // appended to remoteOptions (tests)
	retry       remote.Backoff  // how Pull tries a fetch again

	mu sync.Mutex // serializes progress lines
}

func newConfig(opts []Opt) (*config, error) {
	c := &config{
		platform:    v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		insecure:    map[string]bool{},
		progress:    io.Discard,
		compression: Compression{Algorithm: Gzip},
		keychain:    authn.DefaultKeychain,
		jobs:        DefaultJobs,
		retry:       defaultRetry,
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// WithPlatform picks the image Pull takes from a manifest list, as
// "os/arch[/variant]" (default linux/GOARCH).
func WithPlatform(platform string) Opt {
	return func(c *config) error {
		if platform == "" {
			return nil
		}
		p, err := v1.ParsePlatform(platform)
		if err != nil {
			return fmt.Errorf("platform %q: %w", platform, err)
		}
		if p.OS == "" || p.Architecture == "" {
			return fmt.Errorf("platform %q: want os/arch[/variant]", platform)
		}
		c.platform = *p
		return nil
	}
}

// WithInsecure lets the given registry hosts ("host" or "host:port") be
// reached over plain http or https without certificate verification.
// localhost, 127.0.0.0/8, ::1 and private addresses use plain http anyway.
func WithInsecure(hosts ...string) Opt {
	return func(c *config) error {
		for _, h := range hosts {
			for _, h := range strings.Split(h, ",") {
				if h = strings.TrimSpace(h); h != "" {
					c.insecure[h] = true
				}
			}
		}
		return nil
	}
}

// WithProgress sends docker-style progress lines ("<id>: Pull complete",
// "<id>: Pushed", ...) to w. Lines are written whole, one Write each.
func WithProgress(w io.Writer) Opt {
	return func(c *config) error {
		if w != nil {
			c.progress = w
		}
		return nil
	}
}

// WithCompression sets how uncompressed layers are compressed when they
// leave the machine (Push; Save only when this option is given). See
// ParseCompression for the spelling.
func WithCompression(spec string) Opt {
	return func(c *config) error {
		comp, err := ParseCompression(spec)
		if err != nil {
			return err
		}
		c.compression = comp
		c.compressSet = true
		return nil
	}
}

// WithKeychain replaces authn.DefaultKeychain (the docker config:
// $DOCKER_CONFIG/config.json or ~/.docker/config.json, read by docker/cli's
// config package, so its credsStore and credHelpers are asked as docker asks
// them; lbuild login stores credentials the same way).
func WithKeychain(k authn.Keychain) Opt {
	return func(c *config) error {
		c.keychain = k
		return nil
	}
}

// WithTransport sets the HTTP transport for registry requests (default
// remote.DefaultTransport).
func WithTransport(t http.RoundTripper) Opt {
	return func(c *config) error {
		c.transport = t
		return nil
	}
}

// WithJobs sets how many blobs move at once (default DefaultJobs).
func WithJobs(n int) Opt {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("jobs must be at least 1, not %d", n)
		}
		c.jobs = n
		return nil
	}
}

// withRemoteOptions adds options for go-containerregistry's remote (tests
// use it to retry fast).
func withRemoteOptions(o ...remote.Option) Opt {
	return func(c *config) error {
		c.remoteExtra = append(c.remoteExtra, o...)
		return nil
	}
}

// defaultRetry is go-containerregistry's default: three tries, waiting 1s
// after the first failure and 3s after the second.
var defaultRetry = remote.Backoff{Duration: time.Second, Factor: 3, Jitter: 0.1, Steps: 3}

// withRetryBackoff sets how Pull (and go-containerregistry under every
// operation) tries again (tests use it to retry fast).
func withRetryBackoff(b remote.Backoff) Opt {
	return func(c *config) error {
		c.retry = b
		c.remoteExtra = append(c.remoteExtra, remote.WithRetryBackoff(b))
		return nil
	}
}

// permanentError marks an error that trying again cannot cure.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func permanent(err error) error { return permanentError{err} }

// retryable reports whether err is a network failure that trying again may
// cure: a connection reset or closed, a body cut short, a timeout, a
// temporary registry answer (429, 5xx). Refusals, digest mismatches and
// cancellations are not.
func retryable(err error) bool {
	var perm permanentError
	var rf *refusal
	var terr *transport.Error
	var nerr net.Error
	switch {
	case err == nil, errors.As(err, &perm), errors.As(err, &rf), errors.Is(err, ErrDigestMismatch),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.As(err, &terr):
		switch terr.StatusCode {
		case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
			http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return terr.Temporary()
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return true
	case errors.As(err, &nerr):
		return nerr.Timeout()
	}
	return false
}

// retrying calls fn until it succeeds, fails with an error retryable does
// not accept, or the tries of c.retry are spent; between tries it waits as
// c.retry says and prints a progress line for what ("<what>: Retrying in
// 1s: <error>"). It returns fn's last error.
func (c *config) retrying(ctx context.Context, what string, fn func() error) error {
	b := c.retry
	for {
		err := fn()
		if err == nil || !retryable(err) || b.Steps <= 1 || ctx.Err() != nil {
			return err
		}
		d := b.Step()
		c.printf("%s: Retrying in %s: %v", what, d.Round(time.Millisecond), err)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

func (c *config) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.progress, format+"\n", args...)
}

// parseRef parses ref, marking its registry insecure when WithInsecure
// names it.
func (c *config) parseRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("invalid reference %q: %w", ref, err)
	}
	if c.insecure[r.Context().RegistryStr()] {
		r, err = name.ParseReference(ref, name.Insecure)
		if err != nil {
			return nil, fmt.Errorf("invalid reference %q: %w", ref, err)
		}
	}
	return r, nil
}

func (c *config) remoteOptions(ctx context.Context) []remote.Option {
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(c.keychain),
		remote.WithPlatform(c.platform),
		remote.WithJobs(c.jobs),
		remote.WithUserAgent("lbuild"),
	}
	if c.transport != nil {
		opts = append(opts, remote.WithTransport(c.transport))
	}
	return append(opts, c.remoteExtra...)
}

func shortHex(h v1.Hash) string {
	if len(h.Hex) < 12 {
		return h.Hex
	}
	return h.Hex[:12]
}
