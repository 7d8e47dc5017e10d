package transfer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/store"
)

// Every image that comes in from outside (Pull, Load) passes one door
// before it is tagged: its manifest and config are checked for shape
// (checkManifest, checkConfig), every blob against its descriptor (digest,
// size) and every layer's uncompressed content against the diff ID the
// config claims for its position (checkLayers). Layers are unpacked once
// per chain ID and shared between images, so a layer that lied about its
// diff ID would be unpacked as the layer it claims to be, for every image
// built on it.

// ErrInvalidImage is returned (wrapped) when an image read from a registry
// or an archive is malformed or unsupported: a manifest or config that does
// not parse, unknown media types, foreign layers, a config whose diff IDs do
// not match the manifest's layers. Nothing is tagged in that case.
var ErrInvalidImage = errors.New("invalid image")

// refusal is the one-line error an image is refused with: msg as it is,
// matching its class (ErrInvalidImage or ErrDigestMismatch) with errors.Is.
type refusal struct {
	msg   string
	class error
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return r.class }

func refuse(class error, format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...) + "; refusing the image", class: class}
}

// metaDiffIDs is the store metadata kind that records the diff ID of a
// compressed layer blob, keyed by the blob digest's hex, as
// "<compression> <diff ID>" (e.g. "gzip sha256:…"): the sha256 of the blob
// decompressed as that compression says, computed when the blob came in.
const metaDiffIDs = "diffids"

// layerKinds are the layer media types lbuild accepts, by the compression
// their blob has.
var layerKinds = map[types.MediaType]compression.Kind{
	types.OCIUncompressedLayer:    compression.None,
	types.OCILayer:                compression.Gzip,
	types.OCILayerZStd:            compression.Zstd,
	types.DockerUncompressedLayer: compression.None,
	types.DockerLayer:             compression.Gzip,
}

// foreignLayers are the media types of layers that are not in the registry
// (or archive) but fetched from their URLs, which lbuild does not do.
var foreignLayers = map[types.MediaType]bool{
	types.DockerForeignLayer:                                       true,
	types.OCIRestrictedLayer:                                       true,
	types.OCIUncompressedRestrictedLayer:                           true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": true,
}

// checkManifest parses manifest bytes mb of media type mt (as the registry,
// archive or layout announced it) and checks what can be checked without
// the blobs: schema version 2, an image manifest type, a known config media
// type, a known, distributable media type and a positive size for every
// layer. name is the image's name in errors.
func checkManifest(mb []byte, mt types.MediaType, name string) (*v1.Manifest, error) {
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, refuse(ErrInvalidImage, "image %s: manifest does not parse (%v)", name, err)
	}
	if mt == "" {
		mt = m.MediaType
	}
	if m.MediaType != "" && m.MediaType != mt {
		return nil, refuse(ErrInvalidImage, "image %s: manifest says it is %s but was announced as %s", name, m.MediaType, mt)
	}
	if mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		return nil, refuse(ErrInvalidImage, "image %s: manifest media type %q is not an OCI or docker v2 image manifest", name, mt)
	}
	if m.SchemaVersion != 2 {
		return nil, refuse(ErrInvalidImage, "image %s: manifest schemaVersion %d, want 2", name, m.SchemaVersion)
	}
	if m.Config.MediaType != types.OCIConfigJSON && m.Config.MediaType != types.DockerConfigJSON {
		return nil, refuse(ErrInvalidImage, "image %s: config media type %q is not an OCI or docker image config", name, m.Config.MediaType)
	}
	if m.Config.Size <= 0 {
		return nil, refuse(ErrInvalidImage, "image %s: config size %d", name, m.Config.Size)
	}
	for i, l := range m.Layers {
		switch _, known := layerKinds[l.MediaType]; {
		case len(l.URLs) > 0 || foreignLayers[l.MediaType]:
			return nil, refuse(ErrInvalidImage, "layer %d of %s is a foreign layer (%s) to fetch from elsewhere, which lbuild does not support", i+1, name, l.MediaType)
		case !known:
			return nil, refuse(ErrInvalidImage, "layer %d of %s has unknown media type %q", i+1, name, l.MediaType)
		case l.Size <= 0:
			return nil, refuse(ErrInvalidImage, "layer %d of %s has size %d", i+1, name, l.Size)
		}
	}
	return m, nil
}

// checkConfig parses config bytes cb of the image with manifest m and
// checks that they are the config m names (digest and size), that rootfs
// is of type "layers" and that it lists one diff ID per layer, the same one
// wherever a layer blob repeats.
func checkConfig(m *v1.Manifest, cb []byte, name string) (*v1.ConfigFile, error) {
	h, n, _ := v1.SHA256(bytes.NewReader(cb))
	if h != m.Config.Digest || n != m.Config.Size {
		return nil, refuse(ErrDigestMismatch, "image %s: config is %s (%d bytes), the manifest names %s (%d bytes)", name, h, n, m.Config.Digest, m.Config.Size)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, refuse(ErrInvalidImage, "image %s: config does not parse (%v)", name, err)
	}
	if cfg.RootFS.Type != "layers" {
		return nil, refuse(ErrInvalidImage, "image %s: config rootfs type %q, want \"layers\"", name, cfg.RootFS.Type)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, refuse(ErrInvalidImage, "image %s: config lists %d diff IDs but the manifest %d layers", name, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	claimed := map[v1.Hash]int{}
	for i, l := range m.Layers {
		d := cfg.RootFS.DiffIDs[i]
		if d.Algorithm != "sha256" || len(d.Hex) != 64 {
			return nil, refuse(ErrInvalidImage, "layer %d of %s: config diff ID %q is not a sha256 digest", i+1, name, d)
		}
		if layerKinds[l.MediaType] == compression.None && l.Digest != d {
			// The blob is the uncompressed tar: its digest is its diff ID.
			return nil, diffIDMismatch(i, name, l.Digest, d)
		}
		if j, ok := claimed[l.Digest]; ok && cfg.RootFS.DiffIDs[j] != d {
			return nil, refuse(ErrDigestMismatch, "layer %d of %s is the blob of layer %d but the config claims another diff ID for it", i+1, name, j+1)
		}
		claimed[l.Digest] = i
	}
	return &cfg, nil
}

// checkLayers checks every layer of m against the store: its blob is there
// with the size m gives, and its content has the diff ID cfg claims at its
// position (see layerDiffID).
func checkLayers(ctx context.Context, st *store.Store, m *v1.Manifest, cfg *v1.ConfigFile, name string) error {
	for i, l := range m.Layers {
		size, err := st.BlobSize(l.Digest)
		if err != nil {
			return fmt.Errorf("layer %d of %s: %w", i+1, name, err)
		}
		if size != l.Size {
			return refuse(ErrDigestMismatch, "layer %d of %s: blob %s has %d bytes but the manifest says %d", i+1, name, l.Digest, size, l.Size)
		}
		got, err := layerDiffID(ctx, st, l)
		if err != nil {
			return refuse(ErrInvalidImage, "layer %d of %s: %v", i+1, name, err)
		}
		if want := cfg.RootFS.DiffIDs[i]; got != want {
			return diffIDMismatch(i, name, got, want)
		}
	}
	return nil
}

func diffIDMismatch(i int, name string, got, want v1.Hash) error {
	return refuse(ErrDigestMismatch, "layer %d of %s: content has diff ID %s but the config claims %s", i+1, name, got, want)
}

// layerDiffID returns the diff ID of stored layer blob l: its digest when
// its media type says it is uncompressed, the recorded one (metaDiffIDs)
// when the blob came in through this package, or else the sha256 of the
// blob decompressed, computed now and recorded.
func layerDiffID(ctx context.Context, st *store.Store, l v1.Descriptor) (v1.Hash, error) {
	kind := layerKinds[l.MediaType]
	if kind == compression.None {
		return l.Digest, nil
	}
	if d, ok := recordedDiffID(st, l.Digest, kind); ok {
		return d, nil
	}
	rc, err := st.OpenBlob(l.Digest)
	if err != nil {
		return v1.Hash{}, err
	}
	defer rc.Close()
	zr, err := compression.Reader(bufio.NewReaderSize(&ctxReader{ctx: ctx, r: rc}, 1<<20), kind)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("content does not decompress as %s (%w)", kind, err)
	}
	defer zr.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, zr, make([]byte, 1<<20)); err != nil {
		if ctx.Err() != nil {
			return v1.Hash{}, ctx.Err()
		}
		return v1.Hash{}, fmt.Errorf("content does not decompress as %s (%w)", kind, err)
	}
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	recordDiffID(st, l.Digest, kind, d)
	return d, nil
}

func recordedDiffID(st *store.Store, h v1.Hash, kind compression.Kind) (v1.Hash, bool) {
	b, err := st.Meta(metaDiffIDs, h.Hex)
	if err != nil {
		return v1.Hash{}, false
	}
	k, ds, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	if !ok || compression.Kind(k) != kind {
		return v1.Hash{}, false
	}
	d, err := v1.NewHash(ds)
	if err != nil {
		return v1.Hash{}, false
	}
	return d, true
}

// recordDiffID notes that blob h decompressed as kind hashes to diffID
// (best effort: a lost record costs a rehash).
func recordDiffID(st *store.Store, h v1.Hash, kind compression.Kind, diffID v1.Hash) {
	st.SetMeta(metaDiffIDs, h.Hex, []byte(string(kind)+" "+diffID.String()+"\n"))
}

// ingested is what ingest stored.
type ingested struct {
	Digest v1.Hash
	Size   int64
	// DiffID is the sha256 of the content decompressed (when ingest was
	// given a compression; else zero). DiffErr says why there is none when
	// the content did not decompress.
	DiffID  v1.Hash
	DiffErr error
}

// ingest streams r into the store as one blob, in one pass.
//
// When want is not nil the blob must hash to want.Digest (and have
// want.Size bytes when that is > 0), or nothing is stored and the error
// wraps ErrDigestMismatch. When kind is not compression.None the content is
// also decompressed as kind while it is stored, and its sha256 (the diff ID,
// if the blob is a layer) is returned and recorded in the store's metadata;
// content that does not decompress has DiffErr set instead. When accept is
// not nil it sees the result before the blob is committed, and an error
// from it is returned with nothing stored.
func ingest(st *store.Store, r io.Reader, want *v1.Descriptor, kind compression.Kind, accept func(ingested) error) (ingested, error) {
	bw, err := st.Writer()
	if err != nil {
		return ingested{}, err
	}
	defer bw.Close()
	dgst := sha256.New()
	ws := []io.Writer{bw, dgst}

	var (
		pw   *io.PipeWriter
		diff chan ingested
	)
	if kind != compression.None {
		var pr *io.PipeReader
		pr, pw = io.Pipe()
		diff = make(chan ingested, 1)
		go func() {
			var res ingested
			zr, err := compression.Reader(bufio.NewReaderSize(pr, 1<<20), kind)
			if err == nil {
				h := sha256.New()
				if _, err = io.CopyBuffer(h, zr, make([]byte, 1<<20)); err == nil {
					res.DiffID = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
				}
				zr.Close()
			}
			if err != nil {
				res.DiffErr = fmt.Errorf("content does not decompress as %s (%w)", kind, err)
			}
			io.Copy(io.Discard, pr) // trailing bytes, or all of them after an error
			diff <- res
		}()
		ws = append(ws, pw)
	}
	_, err = io.CopyBuffer(io.MultiWriter(ws...), r, make([]byte, 1<<20))
	var res ingested
	if pw != nil {
		pw.CloseWithError(err)
		res = <-diff
	}
	if err != nil {
		return ingested{}, err
	}
	res.Digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(dgst.Sum(nil))}
	res.Size = bw.Size()
	if want != nil {
		if res.Digest != want.Digest {
			return ingested{}, fmt.Errorf("blob %s: received content hashes to %s: %w", want.Digest, res.Digest, ErrDigestMismatch)
		}
		if want.Size > 0 && res.Size != want.Size {
			return ingested{}, fmt.Errorf("blob %s: received %d bytes, want %d: %w", want.Digest, res.Size, want.Size, ErrDigestMismatch)
		}
	}
	if accept != nil {
		if err := accept(res); err != nil {
			return ingested{}, err
		}
	}
	if _, _, err := bw.Commit(); err != nil {
		return ingested{}, err
	}
	if res.DiffErr == nil && kind != compression.None {
		recordDiffID(st, res.Digest, kind, res.DiffID)
	}
	return res, nil
}
