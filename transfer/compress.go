package transfer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/store"
)

// Compression algorithms.
const (
	Gzip = "gzip"
	Zstd = "zstd"
)

// Compression is how an uncompressed layer is compressed on the way out.
// Level 0 means the algorithm's default (gzip 6, zstd 3).
type Compression struct {
	Algorithm string // Gzip or Zstd
	Level     int
}

// ParseCompression reads "gzip", "zstd", "gzip,level=N" (1-9) or
// "zstd,level=N" (1-22). An empty string means gzip.
func ParseCompression(spec string) (Compression, error) {
	parts := strings.Split(strings.TrimSpace(spec), ",")
	c := Compression{Algorithm: strings.ToLower(strings.TrimSpace(parts[0]))}
	if c.Algorithm == "" {
		c.Algorithm = Gzip
	}
	if c.Algorithm != Gzip && c.Algorithm != Zstd {
		return Compression{}, fmt.Errorf("compression %q: want gzip or zstd[,level=N]", spec)
	}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || k != "level" {
			return Compression{}, fmt.Errorf("compression %q: unknown option %q (want level=N)", spec, p)
		}
		n, err := strconv.Atoi(v)
		max := 9
		if c.Algorithm == Zstd {
			max = 22
		}
		if err != nil || n < 1 || n > max {
			return Compression{}, fmt.Errorf("compression %q: level must be 1-%d", spec, max)
		}
		c.Level = n
	}
	return c, nil
}

func (c Compression) level() int {
	if c.Level != 0 {
		return c.Level
	}
	if c.Algorithm == Zstd {
		return 3
	}
	return 6
}

// String is the canonical spelling, e.g. "gzip,level=6".
func (c Compression) String() string {
	return fmt.Sprintf("%s,level=%d", c.Algorithm, c.level())
}

// key names the mapping file: the same compressed bytes come out of the
// same input, algorithm, level and library.
func (c Compression) key() string { return fmt.Sprintf("%s-%d", c.Algorithm, c.level()) }

func (c Compression) newWriter(w io.Writer) (io.WriteCloser, error) {
	switch c.Algorithm {
	case Gzip:
		return gzip.NewWriterLevel(w, c.level())
	case Zstd:
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(c.level())))
	}
	return nil, fmt.Errorf("unknown compression %q", c.Algorithm)
}

// mediaTypeFor is the media type of an uncompressed layer of type mt once
// compressed with c.
func (c Compression) mediaTypeFor(mt types.MediaType) (types.MediaType, error) {
	switch {
	case c.Algorithm == Gzip && mt == types.DockerUncompressedLayer:
		return types.DockerLayer, nil
	case c.Algorithm == Gzip:
		return types.OCILayer, nil
	case c.Algorithm == Zstd && mt == types.DockerUncompressedLayer:
		return "", errors.New("zstd layers need an OCI manifest, and this image has a docker one: use gzip")
	default:
		return types.OCILayerZStd, nil
	}
}

func isUncompressedLayer(mt types.MediaType) bool {
	return mt == types.OCIUncompressedLayer || mt == types.DockerUncompressedLayer
}

// compressedRecord is the persisted mapping of one (DiffID, Compression).
type compressedRecord struct {
	DiffID      v1.Hash         `json:"diffID"`
	Compression string          `json:"compression"`
	Digest      v1.Hash         `json:"digest"`
	Size        int64           `json:"size"`
	MediaType   types.MediaType `json:"mediaType"`
}

// compressor merges concurrent compressions of the same layer and setting
// in the same store within this process (as buildkit's flightcontrol does).
type compressor struct {
	mu       sync.Mutex
	inflight map[string]*flight
}

type flight struct {
	done chan struct{}
	desc v1.Descriptor
	err  error
}

var layerCompressor = &compressor{inflight: map[string]*flight{}}

func flightKey(st *store.Store, diffID v1.Hash, c Compression) string {
	return st.Dir() + "\x00" + diffID.Hex + "." + c.key()
}

// once returns cached() if it has an answer, or else calls run, unless
// another goroutine is already making the same key: then it waits for that
// one and takes its result. When that one failed (perhaps only because its
// own context ended, or its upload failed), it tries again itself. The
// second result reports whether run ran here.
func (cp *compressor) once(ctx context.Context, key string, cached func() (v1.Descriptor, bool), run func() (v1.Descriptor, error)) (v1.Descriptor, bool, error) {
	for {
		if d, ok := cached(); ok {
			return d, false, nil
		}
		cp.mu.Lock()
		if f, ok := cp.inflight[key]; ok {
			cp.mu.Unlock()
			select {
			case <-f.done:
				if f.err == nil {
					return f.desc, false, nil
				}
				continue
			case <-ctx.Done():
				return v1.Descriptor{}, false, ctx.Err()
			}
		}
		f := &flight{done: make(chan struct{})}
		cp.inflight[key] = f
		cp.mu.Unlock()

		f.desc, f.err = run()
		cp.mu.Lock()
		delete(cp.inflight, key)
		cp.mu.Unlock()
		close(f.done)
		return f.desc, f.err == nil, f.err
	}
}

// metaCompressed is the store metadata kind of the (DiffID, Compression)
// -> compressed blob mapping: one compressedRecord (JSON) per key
// "<diffID hex>.<Compression.key()>.json".
const metaCompressed = "compressed"

func mappingKey(diffID v1.Hash, c Compression) string {
	return diffID.Hex + "." + c.key() + ".json"
}

// cachedCompressed returns the remembered compressed form of layer l, if
// both the mapping and the blob are still there.
func cachedCompressed(st *store.Store, l v1.Descriptor, c Compression) (v1.Descriptor, bool) {
	b, err := st.Meta(metaCompressed, mappingKey(l.Digest, c))
	if err != nil {
		return v1.Descriptor{}, false
	}
	var rec compressedRecord
	if json.Unmarshal(b, &rec) != nil || rec.DiffID != l.Digest || !st.HasBlob(rec.Digest) {
		return v1.Descriptor{}, false
	}
	if size, err := st.BlobSize(rec.Digest); err != nil || size != rec.Size {
		return v1.Descriptor{}, false
	}
	out := l
	out.MediaType, out.Digest, out.Size = rec.MediaType, rec.Digest, rec.Size
	return out, true
}

// remember records that layer l compresses under c to the stored blob
// d (which must be committed already) and returns l's outgoing descriptor.
func remember(st *store.Store, l v1.Descriptor, c Compression, d v1.Descriptor) (v1.Descriptor, error) {
	rec := compressedRecord{DiffID: l.Digest, Compression: c.String(), Digest: d.Digest, Size: d.Size, MediaType: d.MediaType}
	b, _ := json.Marshal(rec)
	if err := st.SetMeta(metaCompressed, mappingKey(l.Digest, c), b); err != nil {
		return v1.Descriptor{}, err
	}
	if k := layerKinds[d.MediaType]; k != "" {
		recordDiffID(st, d.Digest, k, l.Digest) // the pass checked l's digest
	}
	out := l
	out.MediaType, out.Digest, out.Size = d.MediaType, d.Digest, d.Size
	return out, nil
}

// Compressed returns the descriptor layer l leaves the machine with under
// compression c. A layer that is already compressed is returned as it is.
// An uncompressed one is compressed once, in a single streaming pass (store
// blob -> sha256 check of the DiffID -> compressor -> new store blob), and
// the result is remembered in the store's metadata; later calls (in this or
// another process) return the stored blob without compressing again.
// The second result reports whether compression ran.
//
// Push does not call this for layers it has to compress: it compresses and
// uploads them in the same pass (see streamCompressed).
func Compressed(ctx context.Context, st *store.Store, l v1.Descriptor, c Compression) (v1.Descriptor, bool, error) {
	if !isUncompressedLayer(l.MediaType) {
		return l, false, nil
	}
	return layerCompressor.once(ctx, flightKey(st, l.Digest, c),
		func() (v1.Descriptor, bool) { return cachedCompressed(st, l, c) },
		func() (v1.Descriptor, error) { return compressLayer(ctx, st, l, c) })
}

// compressRuns counts compression passes (compressPass calls), for tests.
var compressRuns atomic.Int64

// openHook, when not nil, is called with the digest of each store blob this
// package opens to compress or upload it. For tests; set it only while no
// other test runs.
var openHook func(v1.Hash)

func openBlob(st *store.Store, h v1.Hash) (io.ReadCloser, error) {
	if openHook != nil {
		openHook(h)
	}
	return st.OpenBlob(h)
}

func compressLayer(ctx context.Context, st *store.Store, l v1.Descriptor, c Compression) (v1.Descriptor, error) {
	mt, err := c.mediaTypeFor(l.MediaType)
	if err != nil {
		return v1.Descriptor{}, err
	}
	bw, want, _, err := compressPass(ctx, st, l, c, nil)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer bw.Close()
	h, n, err := bw.Commit()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("compress layer %s: %w", shortHex(l.Digest), err)
	}
	if h != want {
		return v1.Descriptor{}, fmt.Errorf("compress layer %s: store committed %s, compressor produced %s", shortHex(l.Digest), h, want)
	}
	return remember(st, l, c, v1.Descriptor{MediaType: mt, Digest: h, Size: n})
}

// compressPass is the one pass over an uncompressed layer l: it reads the
// store blob once, checks that it hashes to l's digest (its DiffID), and
// writes it compressed with c into a new store blob writer and, when out is
// not nil, to out as well. It returns that writer uncommitted (the caller
// must Commit or Close it) with the sha256 and size of the compressed
// bytes. On an error nothing is left behind.
func compressPass(ctx context.Context, st *store.Store, l v1.Descriptor, c Compression, out io.Writer) (*store.BlobWriter, v1.Hash, int64, error) {
	compressRuns.Add(1)
	fail := func(err error) (*store.BlobWriter, v1.Hash, int64, error) {
		return nil, v1.Hash{}, 0, fmt.Errorf("compress layer %s: %w", shortHex(l.Digest), err)
	}
	rc, err := openBlob(st, l.Digest)
	if err != nil {
		return fail(err)
	}
	defer rc.Close()
	bw, err := st.Writer()
	if err != nil {
		return fail(err)
	}
	ok := false
	defer func() {
		if !ok {
			bw.Close()
		}
	}()
	dgst := sha256.New()
	var n countWriter
	ws := []io.Writer{bw, dgst, &n}
	if out != nil {
		ws = append(ws, out)
	}
	// Compressors write in small pieces (flate every ~240 bytes): batch
	// them, or each becomes a file write and a pipe hand-off.
	batch := bufio.NewWriterSize(io.MultiWriter(ws...), compressedBatch)
	zw, err := c.newWriter(batch)
	if err != nil {
		return fail(err)
	}
	diff := sha256.New()
	buf := make([]byte, 1<<20)
	src := io.TeeReader(&ctxReader{ctx: ctx, r: rc}, diff)
	if _, err := io.CopyBuffer(zw, src, buf); err != nil {
		zw.Close()
		return fail(err)
	}
	if err := zw.Close(); err != nil {
		return fail(err)
	}
	if err := batch.Flush(); err != nil {
		return fail(err)
	}
	if got := hex.EncodeToString(diff.Sum(nil)); got != l.Digest.Hex {
		return nil, v1.Hash{}, 0, fmt.Errorf("compress layer %s: stored blob hashes to sha256:%s: %w", l.Digest, got, ErrDigestMismatch)
	}
	ok = true
	return bw, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(dgst.Sum(nil))}, int64(n), nil
}

// compressedBatch is how many compressed bytes compressPass gathers before
// it writes them on.
const compressedBatch = 256 << 10

// countWriter counts the bytes written to it.
type countWriter int64

func (w *countWriter) Write(p []byte) (int, error) {
	*w += countWriter(len(p))
	return len(p), nil
}

// KeepCompressed reports the compressed blobs recorded in the store's
// "compressed" metadata whose uncompressed layer is in live. Pass it (or
// something built on it) as the keep function of store.GC so that GC does
// not throw away the compressed forms of layers it keeps.
func KeepCompressed(st *store.Store, live func(v1.Hash) bool) (map[v1.Hash]bool, error) {
	keys, err := st.MetaKeys(metaCompressed)
	if err != nil {
		return nil, fmt.Errorf("read compressed mappings: %w", err)
	}
	keep := map[v1.Hash]bool{}
	for _, k := range keys {
		if !strings.HasSuffix(k, ".json") {
			continue
		}
		b, err := st.Meta(metaCompressed, k)
		if err != nil {
			continue
		}
		var rec compressedRecord
		if json.Unmarshal(b, &rec) == nil && (live == nil || live(rec.DiffID)) {
			keep[rec.Digest] = true
		}
	}
	return keep, nil
}

// ctxReader stops a long copy when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
