package transfer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/store"
)

// Format is an archive format for Save.
type Format string

const (
	// FormatDocker is a docker-archive as `docker save` (25+) writes it:
	// manifest.json (which docker load, podman load and skopeo's
	// docker-archive: read) next to a complete OCI layout.
	FormatDocker Format = "docker"
	// FormatOCI is an OCI archive: a tar of an OCI image layout
	// (skopeo's oci-archive:).
	FormatOCI Format = "oci"
)

// ParseFormat accepts "docker" (also "docker-archive") and "oci" (also
// "oci-archive").
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(s) {
	case "", "docker", "docker-archive":
		return FormatDocker, nil
	case "oci", "oci-archive":
		return FormatOCI, nil
	}
	return "", fmt.Errorf("archive format %q: want docker or oci", s)
}

const (
	annotationContainerdName = "io.containerd.image.name"
	maxJSONSize              = 8 << 20
)

// dockerManifestEntry is one element of a docker-archive's manifest.json.
type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// Save writes imgs as one archive to w, each blob once. refs[i] is the name
// imgs[i] gets in the archive ("" for none); with refs nil every image is
// saved under all of its store refs. Layers are written as stored
// (lbuild's own uncompressed, pulled ones compressed as the registry sent
// them), unless WithCompression is given, which compresses uncompressed
// layers as Push does, reusing the same remembered compressed blobs.
// Nothing is held in memory but manifests and configs; w receives a plain
// (uncompressed) tar stream.
func Save(ctx context.Context, st *store.Store, imgs []*store.Image, refs []string, w io.Writer, format Format, opts ...Opt) error {
	c, err := newConfig(opts)
	if err != nil {
		return err
	}
	if refs != nil && len(refs) != len(imgs) {
		return fmt.Errorf("save: %d images but %d refs", len(imgs), len(refs))
	}
	if format != FormatDocker && format != FormatOCI {
		return fmt.Errorf("save: unknown format %q", format)
	}
	tw := newArchiveWriter(w)
	if err := tw.dir("blobs/"); err != nil {
		return err
	}
	if err := tw.dir("blobs/sha256/"); err != nil {
		return err
	}
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
	var dmanifest []dockerManifestEntry
	dIndex := map[v1.Hash]int{} // manifest digest -> dmanifest index
	for i, img := range imgs {
		names := img.Refs
		if refs != nil {
			names = nil
			if refs[i] != "" {
				names = []string{refs[i]}
			}
		}
		out, err := outgoing(ctx, st, img, c)
		if err != nil {
			return fmt.Errorf("save %s: %w", shortHex(img.ID), err)
		}
		for _, d := range append([]v1.Descriptor{out.Config}, out.Layers...) {
			if err := tw.blobFromStore(ctx, st, d.Digest); err != nil {
				return fmt.Errorf("save %s: %w", shortHex(img.ID), err)
			}
		}
		if err := tw.blob(out.Digest, out.Manifest); err != nil {
			return err
		}
		desc := v1.Descriptor{MediaType: out.MediaType, Digest: out.Digest, Size: int64(len(out.Manifest))}
		if len(names) == 0 {
			index.Manifests = append(index.Manifests, desc)
		}
		for _, n := range names {
			d := desc
			d.Annotations = map[string]string{store.AnnotationRefName: n, annotationContainerdName: n}
			index.Manifests = append(index.Manifests, d)
		}
		j, ok := dIndex[out.Digest]
		if !ok {
			e := dockerManifestEntry{Config: blobName(out.Config.Digest), RepoTags: []string{}}
			for _, l := range out.Layers {
				e.Layers = append(e.Layers, blobName(l.Digest))
			}
			dmanifest = append(dmanifest, e)
			j = len(dmanifest) - 1
			dIndex[out.Digest] = j
		}
		for _, n := range names {
			if !strings.Contains(n, "@") {
				dmanifest[j].RepoTags = append(dmanifest[j].RepoTags, store.NormalizeRef(n))
			}
		}
	}
	ib, _ := json.Marshal(index)
	if err := tw.file("index.json", ib); err != nil {
		return err
	}
	if format == FormatDocker {
		mb, _ := json.Marshal(dmanifest)
		if err := tw.file("manifest.json", mb); err != nil {
			return err
		}
	}
	if err := tw.file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := tw.tw.Close(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	return tw.bw.Flush()
}

// outgoing is Prepare with Save's rule: compress only when asked to.
func outgoing(ctx context.Context, st *store.Store, img *store.Image, c *config) (*Outgoing, error) {
	if c.compressSet {
		return Prepare(ctx, st, img, c.compression, c.jobs, nil)
	}
	mb, err := rawManifest(st, img)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("parse manifest %s: %w", img.Manifest.Digest, err)
	}
	mt := img.Manifest.MediaType
	if m.MediaType != "" {
		mt = m.MediaType
	}
	return &Outgoing{Manifest: mb, MediaType: mt, Digest: img.Manifest.Digest, Config: m.Config, Layers: m.Layers}, nil
}

// SaveOCILayout writes img into the OCI image layout directory dir
// (created if missing; an existing layout keeps its other images) and names
// it ref there (img's first ref if ref is ""). Blobs the layout already has
// are not copied. Each file appears atomically. Layers are copied as stored
// unless WithCompression is given. dir is written through store, so it
// also gets the store's hidden .ingest/ and .index.lock, which OCI tools
// ignore.
func SaveOCILayout(ctx context.Context, st *store.Store, img *store.Image, ref, dir string, opts ...Opt) (*store.Image, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if ref == "" && len(img.Refs) > 0 {
		ref = img.Refs[0]
	}
	if ref == "" {
		return nil, fmt.Errorf("save %s to %s: the image has no name: give one", shortHex(img.ID), dir)
	}
	dst, err := store.Open(dir)
	if err != nil {
		return nil, err
	}
	out, err := outgoing(ctx, st, img, c)
	if err != nil {
		return nil, err
	}
	for _, d := range append([]v1.Descriptor{out.Config}, out.Layers...) {
		if dst.HasBlob(d.Digest) {
			continue
		}
		rc, err := st.OpenBlob(d.Digest)
		if err != nil {
			return nil, err
		}
		err = putVerified(dst, &ctxReader{ctx: ctx, r: rc}, d)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("save to %s: %w", dir, err)
		}
	}
	return putManifest(dst, out.Manifest, out.MediaType, []string{ref})
}

func blobName(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

// archiveWriter writes a reproducible tar: fixed times, root-owned, each
// blob once.
type archiveWriter struct {
	bw    *bufio.Writer
	tw    *tar.Writer
	blobs map[v1.Hash]bool
}

func newArchiveWriter(w io.Writer) *archiveWriter {
	bw := bufio.NewWriterSize(w, 1<<20)
	return &archiveWriter{bw: bw, tw: tar.NewWriter(bw), blobs: map[v1.Hash]bool{}}
}

var epoch = time.Unix(0, 0).UTC()

func (a *archiveWriter) dir(name string) error {
	return a.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
}

func (a *archiveWriter) header(name string, size int64) error {
	err := a.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epoch, Format: tar.FormatPAX})
	if err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}

func (a *archiveWriter) file(name string, b []byte) error {
	if err := a.header(name, int64(len(b))); err != nil {
		return err
	}
	if _, err := a.tw.Write(b); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}

func (a *archiveWriter) blob(h v1.Hash, b []byte) error {
	if a.blobs[h] {
		return nil
	}
	a.blobs[h] = true
	return a.file(blobName(h), b)
}

func (a *archiveWriter) blobFromStore(ctx context.Context, st *store.Store, h v1.Hash) error {
	if a.blobs[h] {
		return nil
	}
	a.blobs[h] = true
	size, err := st.BlobSize(h)
	if err != nil {
		return err
	}
	rc, err := st.OpenBlob(h)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := a.header(blobName(h), size); err != nil {
		return err
	}
	if _, err := io.Copy(a.tw, &ctxReader{ctx: ctx, r: rc}); err != nil {
		return fmt.Errorf("write archive: blob %s: %w", h, err)
	}
	return nil
}

var blobPathRE = regexp.MustCompile(`^blobs/sha256/([0-9a-f]{64})$`)

// loadedFile is what Load knows of one regular file of the archive.
type loadedFile struct {
	digest v1.Hash // stored blob, if stored
	data   []byte  // small metadata files, kept in memory instead
}

// Load reads a docker-archive (manifest.json; as docker save, podman save
// or skopeo's docker-archive: write them) or an OCI archive (a tar of an
// OCI layout), plain or gzip-compressed, from r, stores what st lacks and
// tags each image as the archive names it. It returns the images loaded.
//
// The archive is read once, as a stream: blobs named by digest
// (blobs/sha256/<hex>) that st already has are skipped, the others are
// streamed into the store and must hash to their name (else the error wraps
// ErrDigestMismatch); a gzip or zstd blob is decompressed and hashed in the
// same pass, which gives its diff ID. In a docker-archive, layer files keep
// their bytes (compressed or not; the media type is detected) and configs
// their bytes, so the image ID is the archive's. An OCI layout's manifests
// are stored as they are; an image index there is resolved for
// WithPlatform.
//
// Then every image passes the door Pull's images pass (see
// ErrInvalidImage): known media types, one diff ID per layer, every layer
// blob of the size its manifest gives and with the diff ID the config
// claims at its position. Only when all the archive's images pass is any
// tagged; otherwise the error names the first refused one in one line and
// index.json is left as it was (blobs already stored stay, unreferenced,
// for GC).
//
// Progress ("Loaded image: NAME") goes to WithProgress. An image the
// archive does not name is stored but not put in index.json: it is reported
// by ID and GC may collect it.
func Load(ctx context.Context, st *store.Store, r io.Reader, opts ...Opt) ([]*store.Image, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	cr := &compression.Counter{R: r}
	name, size := archiveName(r)
	br := bufio.NewReaderSize(cr, 1<<20)
	if compression.Detect(br) == compression.Gzip { // docker save | gzip
		zr, err := compression.Reader(br, compression.Gzip)
		if err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(bombGuard(zr, cr, size, name), 1<<20)
	}
	tr := tar.NewReader(&ctxReader{ctx: ctx, r: br})
	// What entries expand to is bounded too: a sparse entry does.
	content := bombGuard(tr, cr, size, name)
	files := map[string]*loadedFile{}
	links := map[string]string{}
	for entries := 0; ; entries++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && entries == 0 && !errors.Is(err, ErrTooLarge) {
			return nil, fmt.Errorf("load: not a tar archive: %w", err)
		}
		if err != nil {
			return nil, fmt.Errorf("load: read archive: %w", err)
		}
		name := cleanName(hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			links[name] = cleanName(path.Join(path.Dir(name), hdr.Linkname))
			continue
		case tar.TypeLink:
			links[name] = cleanName(hdr.Linkname)
			continue
		case tar.TypeReg:
		default:
			continue
		}
		base := path.Base(name)
		if m := blobPathRE.FindStringSubmatch(name); m != nil {
			h := v1.Hash{Algorithm: "sha256", Hex: m[1]}
			files[name] = &loadedFile{digest: h}
			if st.HasBlob(h) {
				continue // tar.Reader skips the rest of the entry
			}
			br, kind := sniffLayer(content)
			if _, err := ingest(st, br, &v1.Descriptor{Digest: h, Size: hdr.Size}, kind, nil); err != nil {
				return nil, fmt.Errorf("load: %s: %w", name, err)
			}
			continue
		}
		if base == "json" || base == "VERSION" {
			continue // legacy v1 metadata of old docker save
		}
		if hdr.Size <= maxJSONSize && (strings.HasSuffix(base, ".json") || base == "oci-layout" || base == "repositories") {
			b, err := io.ReadAll(content)
			if err != nil {
				return nil, fmt.Errorf("load: read %s: %w", name, err)
			}
			files[name] = &loadedFile{data: b}
			continue
		}
		br, kind := sniffLayer(content)
		res, err := ingest(st, br, nil, kind, nil)
		if err != nil {
			return nil, fmt.Errorf("load: %s: %w", name, err)
		}
		files[name] = &loadedFile{digest: res.Digest}
	}
	lookup := func(name string) (*loadedFile, bool) {
		name = cleanName(name)
		for i := 0; i < 16; i++ {
			if f, ok := files[name]; ok {
				return f, true
			}
			t, ok := links[name]
			if !ok {
				return nil, false
			}
			name = t
		}
		return nil, false
	}
	pending, err := loadedImages(st, lookup, c.platform)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	// The door: every image is checked before any is tagged, so a refused
	// archive leaves index.json as it was.
	for _, p := range pending {
		if err := p.check(ctx, st); err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
	}
	var imgs []*store.Image
	for _, p := range pending {
		img, err := putManifest(st, p.mb, p.mt, p.names)
		if err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
		imgs = append(imgs, img)
		for _, n := range p.names {
			c.printf("Loaded image: %s", n)
		}
		if len(p.names) == 0 {
			c.printf("Loaded image ID: %s (untagged: tag it to keep it)", img.ID)
		}
	}
	return imgs, nil
}

// pendingImage is an image of an archive, stored but for its manifest and
// not yet checked or tagged.
type pendingImage struct {
	names []string
	mb    []byte
	mt    types.MediaType
}

// check passes p through the door (checkManifest, checkConfig,
// checkLayers).
func (p *pendingImage) check(ctx context.Context, st *store.Store) error {
	name := ""
	if len(p.names) > 0 {
		name = p.names[0]
	} else {
		h, _, _ := v1.SHA256(bytes.NewReader(p.mb))
		name = "image " + h.String()
	}
	m, err := checkManifest(p.mb, p.mt, name)
	if err != nil {
		return err
	}
	rc, err := st.OpenBlob(m.Config.Digest)
	if err != nil {
		return fmt.Errorf("%s: config %s is not in the archive", name, m.Config.Digest)
	}
	cb, err := io.ReadAll(io.LimitReader(rc, maxJSONSize+1))
	rc.Close()
	if err != nil {
		return fmt.Errorf("%s: config: %w", name, err)
	}
	cfg, err := checkConfig(m, cb, name)
	if err != nil {
		return err
	}
	return checkLayers(ctx, st, m, cfg, name)
}

// loadedImages lists the images of a read archive: those of its
// index.json (an OCI layout, as docker 25+ also writes) or else of its
// manifest.json (a docker-archive), whose manifest it writes.
func loadedImages(st *store.Store, lookup func(string) (*loadedFile, bool), platform v1.Platform) ([]*pendingImage, error) {
	var out []*pendingImage
	if f, ok := lookup("index.json"); ok && f.data != nil {
		var idx v1.IndexManifest
		if err := json.Unmarshal(f.data, &idx); err != nil {
			return nil, fmt.Errorf("parse index.json: %w", err)
		}
		for _, d := range idx.Manifests {
			mb, mt, err := resolveManifest(st, d, platform, 0)
			if err != nil {
				return nil, err
			}
			out = append(out, &pendingImage{names: entryNames(d), mb: mb, mt: mt})
		}
		return out, nil
	}
	f, ok := lookup("manifest.json")
	if !ok || f.data == nil {
		return nil, errors.New("neither index.json nor manifest.json in the archive: not a docker or OCI archive")
	}
	var entries []dockerManifestEntry
	if err := json.Unmarshal(f.data, &entries); err != nil {
		return nil, fmt.Errorf("parse manifest.json: %w", err)
	}
	for _, e := range entries {
		cf, ok := lookup(e.Config)
		if !ok {
			return nil, fmt.Errorf("config %s is not in the archive", e.Config)
		}
		cfgDesc, err := storeLoaded(st, cf, types.OCIConfigJSON)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", e.Config, err)
		}
		m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: cfgDesc, Layers: []v1.Descriptor{}}
		for _, lp := range e.Layers {
			lf, ok := lookup(lp)
			if !ok {
				return nil, fmt.Errorf("layer %s is not in the archive", lp)
			}
			ld, err := storeLoaded(st, lf, "")
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", lp, err)
			}
			if ld.MediaType, err = detectLayerType(st, ld.Digest); err != nil {
				return nil, fmt.Errorf("layer %s: %w", lp, err)
			}
			m.Layers = append(m.Layers, ld)
		}
		mb, err := json.Marshal(&m)
		if err != nil {
			return nil, err
		}
		out = append(out, &pendingImage{names: e.RepoTags, mb: mb, mt: types.OCIManifestSchema1})
	}
	return out, nil
}

// sniffLayer returns r buffered, with the compression its first bytes show
// when that is one a layer can have (gzip, zstd), else compression.None.
func sniffLayer(r io.Reader) (io.Reader, compression.Kind) {
	br := bufio.NewReaderSize(r, 64<<10)
	switch k := compression.Detect(br); k {
	case compression.Gzip, compression.Zstd:
		return br, k
	}
	return br, compression.None
}

// An archive may expand to at most max(minLoadExpansion, maxLoadRatio × its
// size) (the file's size when r is a file, else the bytes read so far), both
// when gunzipped and in what its entries hold (a sparse entry expands): past
// that Load refuses it as a likely decompression bomb, before it fills the
// disk.
const (
	maxLoadRatio     = 100
	minLoadExpansion = 1 << 30 // 1 GiB
)

// loadExpansionFloor is minLoadExpansion; tests lower it.
var loadExpansionFloor int64 = minLoadExpansion

// ErrTooLarge is returned (wrapped) by Load for an archive that decompresses
// beyond its bound.
var ErrTooLarge = errors.New("refusing a likely decompression bomb")

// archiveName names the archive r reads and gives its size, when r is a
// regular file.
func archiveName(r io.Reader) (name string, size int64) {
	f, ok := r.(*os.File)
	if !ok {
		return "the archive", 0
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	return f.Name(), size
}

// bombGuard bounds what the archive read through cr expands to (gunzipped,
// or in what its entries hold): max(loadExpansionFloor, maxLoadRatio × its
// size, or the bytes read so far when the size is unknown).
func bombGuard(r io.Reader, cr *compression.Counter, size int64, name string) io.Reader {
	return &compression.Bounded{R: r,
		Limit: func() int64 { return max(loadExpansionFloor, maxLoadRatio*max(size, cr.N)) },
		Err: func(limit int64) error {
			return fmt.Errorf("%s expands to more than %d bytes (the bound is %dx its compressed size, at least %d bytes): %w; if it is genuine, unpack it and load the plain tar",
				name, limit, maxLoadRatio, loadExpansionFloor, ErrTooLarge)
		}}
}

func cleanName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

// entryNames is what an index.json entry is called: containerd's full name
// when present (docker save writes only the tag as ref.name), else the OCI
// ref name.
func entryNames(d v1.Descriptor) []string {
	if n := d.Annotations[annotationContainerdName]; n != "" {
		return []string{n}
	}
	if n := d.Annotations[store.AnnotationRefName]; n != "" {
		return []string{n}
	}
	return nil
}

// resolveManifest reads the manifest d names from the store, descending
// through image indexes to the child for platform.
func resolveManifest(st *store.Store, d v1.Descriptor, platform v1.Platform, depth int) ([]byte, types.MediaType, error) {
	if depth > 4 {
		return nil, "", errors.New("image indexes nested too deep")
	}
	rc, err := st.OpenBlob(d.Digest)
	if err != nil {
		return nil, "", fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	b, err := io.ReadAll(io.LimitReader(rc, maxJSONSize))
	rc.Close()
	if err != nil {
		return nil, "", err
	}
	mt := d.MediaType
	if mt == "" {
		var probe struct {
			MediaType types.MediaType `json:"mediaType"`
		}
		json.Unmarshal(b, &probe)
		mt = probe.MediaType
	}
	switch {
	case mt.IsImage():
		return b, mt, nil
	case mt.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			return nil, "", fmt.Errorf("index %s: %w", d.Digest, err)
		}
		var avail []string
		for _, child := range idx.Manifests {
			if child.Platform != nil && child.Platform.Satisfies(platform) {
				return resolveManifest(st, child, platform, depth+1)
			}
			if child.Platform != nil {
				avail = append(avail, child.Platform.String())
			}
		}
		sort.Strings(avail)
		return nil, "", fmt.Errorf("index %s has no image for %s (has %s)", d.Digest, platform.String(), strings.Join(avail, ", "))
	}
	return nil, "", fmt.Errorf("manifest %s: unsupported media type %q", d.Digest, mt)
}

// bytes returns a loaded file's content: kept in memory, or read back from
// the store (nil if unreadable).
func (f *loadedFile) bytes(st *store.Store) []byte {
	if f.data != nil {
		return f.data
	}
	rc, err := st.OpenBlob(f.digest)
	if err != nil {
		return nil
	}
	defer rc.Close()
	b, _ := io.ReadAll(io.LimitReader(rc, maxJSONSize))
	return b
}

// storeLoaded returns the descriptor of a loaded file, storing it first if
// it was kept in memory.
func storeLoaded(st *store.Store, f *loadedFile, mt types.MediaType) (v1.Descriptor, error) {
	if f.data != nil {
		return putBytes(st, f.data, mt)
	}
	size, err := st.BlobSize(f.digest)
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: f.digest, Size: size}, nil
}

// detectLayerType names a docker-archive layer's media type from its first
// bytes: gzip and zstd are kept compressed, anything else is a plain tar.
func detectLayerType(st *store.Store, h v1.Hash) (types.MediaType, error) {
	rc, err := st.OpenBlob(h)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	magic := make([]byte, 6)
	n, _ := io.ReadFull(rc, magic)
	switch compression.DetectBytes(magic[:n]) {
	case compression.Gzip:
		return types.OCILayer, nil
	case compression.Zstd:
		return types.OCILayerZStd, nil
	}
	return types.OCIUncompressedLayer, nil
}
