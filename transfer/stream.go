package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/store"
)

// streamCompressed is Compressed for a layer on its way to a registry. When
// the compressed form of l under c is not remembered yet, it is made in one
// pass that send uploads as it is produced: send gets a v1.Layer whose
// Digest and Size are not known until its Compressed stream has been read to
// the end (go-containerregistry's remote uploads such a layer with POST,
// PATCH of the stream, then PUT ?digest=). The same pass writes the
// compressed bytes to a new store blob, which is committed, and the mapping
// remembered, only after send succeeded; when send fails nothing is kept.
// The second result reports whether the layer was compressed and sent here;
// when it is false, the descriptor is that of a stored blob (or l itself if
// it is already compressed), which the caller still has to upload.
func streamCompressed(ctx context.Context, st *store.Store, l v1.Descriptor, c Compression, send func(v1.Layer) error) (v1.Descriptor, bool, error) {
	if !isUncompressedLayer(l.MediaType) {
		return l, false, nil
	}
	return layerCompressor.once(ctx, flightKey(st, l.Digest, c),
		func() (v1.Descriptor, bool) { return cachedCompressed(st, l, c) },
		func() (v1.Descriptor, error) {
			mt, err := c.mediaTypeFor(l.MediaType)
			if err != nil {
				return v1.Descriptor{}, err
			}
			sl := &streamLayer{ctx: ctx, st: st, src: l, comp: c, mt: mt}
			serr := send(sl)
			d, ferr := sl.finish(serr == nil)
			if serr != nil {
				// A failed pass (a corrupt store blob, say) explains more
				// than the aborted request it caused.
				if perr := sl.failure(); perr != nil {
					return v1.Descriptor{}, perr
				}
				return v1.Descriptor{}, serr
			}
			if ferr != nil {
				return v1.Descriptor{}, ferr
			}
			return remember(st, l, c, d)
		})
}

// errAbandoned ends a compression pass whose stream nobody reads any more.
var errAbandoned = errors.New("upload finished or abandoned")

// streamLayer is an uncompressed store layer as a v1.Layer that is
// compressed while it is read. Each Compressed call starts a compression
// pass (normally there is one; go-containerregistry calls again only to
// retry an upload) that writes into an io.Pipe, so at most a buffer's worth
// of the layer is in memory, and the uploader's pace is the compressor's.
// Each pass also writes a store blob writer; the last pass that completes
// keeps its writer, uncommitted, until finish.
//
// Digest and Size fail with stream.ErrNotComputed until a pass has
// completed, which makes remote's writer stream the layer (no HEAD check,
// no Content-Length) and read Digest only for the final PUT. A pass
// publishes its digest before it closes its pipe, so a reader that has seen
// EOF sees the digest.
type streamLayer struct {
	ctx  context.Context
	st   *store.Store
	src  v1.Descriptor // the uncompressed layer
	comp Compression
	mt   types.MediaType // the compressed media type

	wg sync.WaitGroup // passes running

	mu      sync.Mutex
	known   bool // a pass has completed: digest and size are set
	digest  v1.Hash
	size    int64
	kept    *store.BlobWriter // the last completed pass's blob, uncommitted
	readers []*io.PipeReader
	err     error // the first pass failure not caused by its reader going away
	closed  bool  // finish was called: no more passes
}

var _ v1.Layer = (*streamLayer)(nil)

func (l *streamLayer) Digest() (v1.Hash, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.known {
		return v1.Hash{}, fmt.Errorf("compressed digest of layer %s: %w", shortHex(l.src.Digest), stream.ErrNotComputed)
	}
	return l.digest, nil
}

func (l *streamLayer) Size() (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.known {
		return 0, fmt.Errorf("compressed size of layer %s: %w", shortHex(l.src.Digest), stream.ErrNotComputed)
	}
	return l.size, nil
}

func (l *streamLayer) DiffID() (v1.Hash, error)            { return l.src.Digest, nil }
func (l *streamLayer) MediaType() (types.MediaType, error) { return l.mt, nil }

func (l *streamLayer) Uncompressed() (io.ReadCloser, error) {
	return openBlob(l.st, l.src.Digest)
}

// Compressed starts a compression pass and returns its output.
func (l *streamLayer) Compressed() (io.ReadCloser, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("layer %s: %w", shortHex(l.src.Digest), errAbandoned)
	}
	pr, pw := io.Pipe()
	l.readers = append(l.readers, pr)
	l.wg.Add(1)
	go l.pass(pw)
	return pr, nil
}

func (l *streamLayer) pass(pw *io.PipeWriter) {
	defer l.wg.Done()
	bw, h, n, err := compressPass(l.ctx, l.st, l.src, l.comp, pw)
	l.mu.Lock()
	if err == nil && l.known && (h != l.digest || n != l.size) {
		err = fmt.Errorf("compress layer %s: a second pass gave %s (%d bytes), the first %s (%d bytes)", shortHex(l.src.Digest), h, n, l.digest, l.size)
		bw.Close()
	}
	if err == nil {
		l.known, l.digest, l.size = true, h, n
		if l.kept != nil {
			l.kept.Close() // the same bytes
		}
		l.kept = bw
	} else if l.err == nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, errAbandoned) {
		l.err = err
	}
	l.mu.Unlock()
	pw.CloseWithError(err) // nil: the reader gets EOF
}

// failure returns the first pass failure that was not caused by the reader
// going away (such as a store blob that does not hash to its DiffID).
func (l *streamLayer) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// finish ends all passes (closing any stream still open) and waits for
// them. If ok (the upload succeeded), the completed pass's blob is committed
// to the store and its descriptor returned; otherwise it is discarded.
func (l *streamLayer) finish(ok bool) (v1.Descriptor, error) {
	l.mu.Lock()
	l.closed = true
	for _, r := range l.readers {
		r.CloseWithError(errAbandoned)
	}
	l.mu.Unlock()
	l.wg.Wait()

	l.mu.Lock()
	bw, want := l.kept, l.digest
	l.kept = nil
	l.mu.Unlock()
	if bw == nil {
		if ok {
			return v1.Descriptor{}, fmt.Errorf("layer %s: upload succeeded but no compression pass completed", shortHex(l.src.Digest))
		}
		return v1.Descriptor{}, nil
	}
	if !ok {
		return v1.Descriptor{}, bw.Close()
	}
	h, n, err := bw.Commit()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("compress layer %s: %w", shortHex(l.src.Digest), err)
	}
	if h != want {
		return v1.Descriptor{}, fmt.Errorf("compress layer %s: store committed %s, compressor produced %s", shortHex(l.src.Digest), h, want)
	}
	return v1.Descriptor{MediaType: l.mt, Digest: h, Size: n}, nil
}
