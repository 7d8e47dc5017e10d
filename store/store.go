// Package store is lbuild's content-addressed image store: a directory that
// is at all times a valid OCI image layout (oci-layout, index.json,
// blobs/sha256/<hex>), so that skopeo (oci:DIR:REF), umoci (--image DIR:REF)
// and go-containerregistry's layout.FromPath can read it directly.
//
// Vocabulary:
//
//   - A blob is an immutable file named by the sha256 of its content.
//   - An image is an OCI manifest blob plus its config blob and layer blobs.
//     Its ID is the digest of its config (docker's image ID).
//   - A ref is a name such as "app:1" recorded in index.json as the
//     annotation org.opencontainers.image.ref.name of a manifest entry.
//     An image written but never tagged is kept in index.json by manifest
//     digest alone, without that annotation.
//
// On-disk atomicity: nothing appears under its final name until it is
// complete and synced. Blobs and index.json are written to temporary files
// in DIR/.ingest/ (a dot-dir that OCI tools ignore), fsynced and renamed into
// place, and the parent directory is fsynced. Every read-modify-write of
// index.json holds an exclusive flock on DIR/.index.lock, so concurrent
// processes never lose each other's tags. Readers take no lock: they always
// see either the old or the new index.json.
//
// Besides the layout, callers may keep small records about the content in
// dot-dirs of DIR through Meta and SetMeta (see there).
package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lbuild/lbuild/internal/fsx"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned (wrapped) for an unknown blob, image or ref.
// Test for it with errors.Is.
var ErrNotFound = errors.New("not found")

// AnnotationRefName is the OCI annotation that names a manifest entry of
// index.json.
const AnnotationRefName = "org.opencontainers.image.ref.name"

const (
	layoutFile = "oci-layout"
	indexFile  = "index.json"
	lockFile   = ".index.lock"
	ingestDir  = ".ingest"
	blobsDir   = "blobs"
	algo       = "sha256"

	layoutContent = `{"imageLayoutVersion":"1.0.0"}`

	// staleIngestAge is how old an unlocked temp file in .ingest must be
	// before GC deletes it. It covers the instant between creating a temp
	// file and locking it.
	staleIngestAge = time.Minute
)

// Store is an OCI image layout directory. Its methods are safe for
// concurrent use by multiple goroutines and multiple processes.
type Store struct {
	dir     string
	gcGrace time.Duration
}

// Opt configures a Store at Open.
type Opt func(*Store) error

// WithGCGrace makes GC keep unreferenced blobs whose modification time is
// less than d old. Blob files get a fresh mtime when committed (also when the
// committed content was already present), so a grace period protects the
// blobs of a build running concurrently with GC that has not yet tagged its
// image or recorded its cache. The default is 0: GC frees every blob that is
// neither referenced nor kept.
func WithGCGrace(d time.Duration) Opt {
	return func(s *Store) error {
		if d < 0 {
			return fmt.Errorf("negative gc grace %v", d)
		}
		s.gcGrace = d
		return nil
	}
}

// Open opens the layout at dir, creating the directory, oci-layout,
// index.json and blobs/sha256 when missing. It checks that dir is writable
// by creating and removing a temporary file and fails with an error naming
// dir otherwise (a read-only mount, a parent that is a regular file, ...).
// An existing oci-layout with another imageLayoutVersion is refused.
func Open(dir string, opts ...Opt) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	s := &Store{dir: abs}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	for _, d := range []string{abs, filepath.Join(abs, blobsDir, algo), filepath.Join(abs, ingestDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("open store %s: not writable: %w", abs, err)
		}
	}
	// Probe writability even when everything already exists.
	f, err := os.CreateTemp(filepath.Join(abs, ingestDir), "probe-*")
	if err != nil {
		return nil, fmt.Errorf("open store %s: not writable: %w", abs, err)
	}
	f.Close()
	os.Remove(f.Name())

	b, err := os.ReadFile(filepath.Join(abs, layoutFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := fsx.WriteFile(filepath.Join(s.dir, layoutFile), filepath.Join(s.dir, ingestDir), []byte(layoutContent), 0o644); err != nil {
			return nil, fmt.Errorf("open store %s: %w", abs, err)
		}
	case err != nil:
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	default:
		var l struct {
			Version string `json:"imageLayoutVersion"`
		}
		if err := json.Unmarshal(b, &l); err != nil {
			return nil, fmt.Errorf("open store %s: parse %s: %w", abs, layoutFile, err)
		}
		if l.Version != "1.0.0" {
			return nil, fmt.Errorf("open store %s: unsupported imageLayoutVersion %q", abs, l.Version)
		}
	}
	if _, err := os.Stat(filepath.Join(abs, indexFile)); errors.Is(err, fs.ErrNotExist) {
		err = s.updateIndex(func(*v1.IndexManifest) (bool, error) { return true, nil })
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", abs, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	return s, nil
}

// Dir returns the absolute path of the layout directory.
func (s *Store) Dir() string { return s.dir }

// BlobPath returns the path blob h has (or would have) in the layout. It
// does not check that the blob exists.
func (s *Store) BlobPath(h v1.Hash) string {
	return filepath.Join(s.dir, blobsDir, h.Algorithm, h.Hex)
}

func validHash(h v1.Hash) error {
	if h.Algorithm != algo || len(h.Hex) != 64 {
		return fmt.Errorf("invalid digest %q", h.String())
	}
	if _, err := hex.DecodeString(h.Hex); err != nil || strings.ToLower(h.Hex) != h.Hex {
		return fmt.Errorf("invalid digest %q", h.String())
	}
	return nil
}

// BlobFile returns the path of stored blob h (an error wrapping ErrNotFound
// if it is not stored). The file must only be read, or hard-linked.
func (s *Store) BlobFile(h v1.Hash) (string, error) {
	if err := validHash(h); err != nil {
		return "", err
	}
	p := s.BlobPath(h)
	if _, err := os.Lstat(p); err != nil {
		return "", fmt.Errorf("blob %s: %w", h, ErrNotFound)
	}
	return p, nil
}

// HasBlob reports whether blob h is stored.
func (s *Store) HasBlob(h v1.Hash) bool {
	_, err := s.BlobFile(h)
	return err == nil
}

// OpenBlob opens blob h for reading; the caller must Close it. An unknown
// blob is an error wrapping ErrNotFound.
func (s *Store) OpenBlob(h v1.Hash) (io.ReadCloser, error) {
	if err := validHash(h); err != nil {
		return nil, err
	}
	f, err := os.Open(s.BlobPath(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", h, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	return f, nil
}

// BlobSize returns the size of blob h, or an error wrapping ErrNotFound.
func (s *Store) BlobSize(h v1.Hash) (int64, error) {
	if err := validHash(h); err != nil {
		return 0, err
	}
	fi, err := os.Stat(s.BlobPath(h))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("blob %s: %w", h, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("stat blob: %w", err)
	}
	return fi.Size(), nil
}

func (s *Store) readBlob(h v1.Hash) ([]byte, error) {
	if err := validHash(h); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.BlobPath(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", h, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read blob: %w", err)
	}
	return b, nil
}

// BlobWriter streams one blob into the store. Bytes are hashed as they are
// written to a temporary file in DIR/.ingest; nothing is read back. The
// writer holds an flock on its temp file until Commit or Close, which is how
// GC tells live temp files from ones left by a crashed process.
// A BlobWriter is not safe for concurrent use.
type BlobWriter struct {
	s *Store
	f *os.File
	h hash.Hash
	n int64
	// flushed is how much of the file has been handed to writeback
	// (SYNC_FILE_RANGE_WRITE) while writing: Commit's fsync then waits
	// for the last stretch only, not for the whole blob.
	flushed int64
	done    bool
	// unnamed: f is an O_TMPFILE, linked into place by Commit.
	unnamed bool
	existed bool // Commit found the blob stored already
}

// Existed reports whether Commit found the blob stored already (and kept
// that file, whose bytes this writer did not hash).
func (w *BlobWriter) Existed() bool { return w.existed }

// Writer starts a new blob. The caller must call Commit or Close.
//
// The blob is written to an unnamed O_TMPFILE in .ingest/ and linked to its
// final name by Commit, so a writer that dies (kill -9 during a build, a
// load or a push) leaves nothing behind: the kernel frees the file. Where
// the filesystem has no O_TMPFILE, a named temp file is used and GC removes
// it once no writer holds its lock.
func (s *Store) Writer() (*BlobWriter, error) {
	dir := filepath.Join(s.dir, ingestDir)
	if f, err := os.OpenFile(dir, os.O_RDWR|unix.O_TMPFILE, 0o600); err == nil {
		return &BlobWriter{s: s, f: f, h: sha256.New(), unnamed: true}, nil
	}
	f, err := os.CreateTemp(dir, "blob-*")
	if err != nil {
		return nil, fmt.Errorf("create temporary blob: %w", err)
	}
	if err := fsx.Flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("lock temporary blob: %w", err)
	}
	return &BlobWriter{s: s, f: f, h: sha256.New()}, nil
}

// Write appends p to the blob.
func (w *BlobWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errors.New("write to finished blob writer")
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("write temporary blob: %w", err)
	}
	if w.n-w.flushed >= writebackChunk {
		// Start writing this stretch to disk now (it does not wait for
		// the disk), so that the disk works while the rest is made and
		// hashed. Best effort: a filesystem without it syncs at Commit.
		unix.SyncFileRange(int(w.f.Fd()), w.flushed, w.n-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
		w.flushed = w.n
	}
	return n, nil
}

// writebackChunk is how much a BlobWriter writes before handing it to
// writeback.
const writebackChunk = 8 << 20

// Size returns the number of bytes written so far.
func (w *BlobWriter) Size() int64 { return w.n }

// Commit syncs the temporary file, makes it read-only and renames it to
// blobs/sha256/<hex>, then syncs that directory. If the blob is already
// stored, the existing file is kept (its mtime refreshed) and the temporary
// one removed; this is success. Commit returns the blob's digest and size.
// After Commit, Close is a no-op. A failed Commit removes the temp file.
func (w *BlobWriter) Commit() (v1.Hash, int64, error) {
	if w.done {
		return v1.Hash{}, 0, errors.New("commit of finished blob writer")
	}
	w.done = true
	tmp := w.f.Name()
	fail := func(err error) (v1.Hash, int64, error) {
		w.f.Close()
		if !w.unnamed {
			os.Remove(tmp)
		}
		return v1.Hash{}, 0, err
	}
	h := v1.Hash{Algorithm: algo, Hex: hex.EncodeToString(w.h.Sum(nil))}
	if err := w.f.Chmod(0o444); err != nil {
		return fail(fmt.Errorf("chmod temporary blob: %w", err))
	}
	if err := w.f.Sync(); err != nil {
		return fail(fmt.Errorf("sync temporary blob: %w", err))
	}
	dst := w.s.BlobPath(h)
	exists := func() (v1.Hash, int64, error) {
		w.existed = true
		now := time.Now()
		os.Chtimes(dst, now, now) // best effort: refresh for WithGCGrace
		w.f.Close()
		if !w.unnamed {
			os.Remove(tmp)
		}
		return h, w.n, nil
	}
	if _, err := os.Stat(dst); err == nil {
		return exists()
	}
	if w.unnamed {
		// Link the complete, synced file to its name: it appears whole or
		// not at all.
		err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", w.f.Fd()), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
		if errors.Is(err, unix.EEXIST) {
			return exists()
		}
		if err != nil {
			return fail(fmt.Errorf("link temporary blob: %w", err))
		}
	} else if err := os.Rename(tmp, dst); err != nil {
		// Renamed while still holding the flock, so GC never sees an
		// unlocked temp file of a live writer.
		return fail(fmt.Errorf("rename temporary blob: %w", err))
	}
	w.f.Close()
	if err := fsx.SyncDir(filepath.Dir(dst)); err != nil {
		return v1.Hash{}, 0, err
	}
	return h, w.n, nil
}

// Close abandons an uncommitted blob and removes its temporary file. After
// Commit it does nothing.
func (w *BlobWriter) Close() error {
	if w.done {
		return nil
	}
	w.done = true
	err := w.f.Close()
	if !w.unnamed {
		if rerr := os.Remove(w.f.Name()); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("discard temporary blob: %w", err)
	}
	return nil
}

// PutBlob stores everything read from r as one blob and returns its digest
// and size. It is idempotent: storing content that is already present
// succeeds and keeps one copy.
func (s *Store) PutBlob(r io.Reader) (v1.Hash, int64, error) {
	w, err := s.Writer()
	if err != nil {
		return v1.Hash{}, 0, err
	}
	defer w.Close()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(w, r, buf); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("put blob: %w", err)
	}
	return w.Commit()
}

// putBytes is PutBlob of b; a blob already stored is not written again
// (a rebuild's config and manifest: no temp file, no fsync), only its mtime
// refreshed, as Commit does when it finds one.
// A file under the name with another size is not that blob (damaged): it
// is replaced.
func (s *Store) putBytes(b []byte) (v1.Hash, int64, error) {
	h := sha256Hash(b)
	if fi, err := os.Stat(s.BlobPath(h)); err == nil {
		if fi.Mode().IsRegular() && fi.Size() == int64(len(b)) {
			now := time.Now()
			os.Chtimes(s.BlobPath(h), now, now) // best effort: refresh for WithGCGrace
			return h, int64(len(b)), nil
		}
		os.Remove(s.BlobPath(h))
	}
	return s.PutBlob(bytes.NewReader(b))
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: algo, Hex: hex.EncodeToString(sum[:])}
}

// Image is an image stored in the layout.
type Image struct {
	ID       v1.Hash         // config digest (docker's image ID)
	Manifest v1.Descriptor   // manifest descriptor (digest, size, media type)
	Config   *v1.ConfigFile  // parsed config
	Layers   []v1.Descriptor // layer descriptors from the manifest
	Refs     []string        // names in index.json pointing at the manifest
}

// WriteImage stores cfg (marshaled once) as the config blob and an OCI
// image manifest (schemaVersion 2, application/vnd.oci.image.manifest.v1+json,
// config application/vnd.oci.image.config.v1+json) listing layers in order.
// The layer blobs must already be stored (an absent one is an error wrapping
// ErrNotFound); lbuild's built layers are uncompressed tars with media type
// application/vnd.oci.image.layer.v1.tar, which the caller sets.
//
// WriteImage does not tag. If index.json holds no entry for the manifest yet,
// an entry without a ref name is added so the image is not lost before it is
// tagged. Writing the same config and layers twice yields the same image.
func (s *Store) WriteImage(cfg *v1.ConfigFile, layers []v1.Descriptor) (*Image, error) {
	if cfg == nil {
		return nil, errors.New("write image: nil config")
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	if layers == nil {
		layers = []v1.Descriptor{} // "layers": [] rather than null
	}
	return s.writeImage(cb, cfg, layers)
}

func (s *Store) writeImage(cb []byte, cfg *v1.ConfigFile, layers []v1.Descriptor) (*Image, error) {
	for _, l := range layers {
		if !s.HasBlob(l.Digest) {
			return nil, fmt.Errorf("write image: layer %s: %w", l.Digest, ErrNotFound)
		}
	}
	ch, csize, err := s.putBytes(cb)
	if err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	m := &v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config: v1.Descriptor{
			MediaType: types.OCIConfigJSON,
			Size:      csize,
			Digest:    ch,
		},
		Layers: layers,
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	mh, msize, err := s.putBytes(mb)
	if err != nil {
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	desc := v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: msize, Digest: mh}
	var refs []string
	err = s.updateIndex(func(idx *v1.IndexManifest) (bool, error) {
		for _, l := range layers {
			if !s.HasBlob(l.Digest) {
				return false, fmt.Errorf("write image: layer %s: %w", l.Digest, ErrNotFound)
			}
		}
		// A GC that ran between writing the config and manifest and taking
		// the lock may have collected them; GC cannot run now, so rewrite.
		for _, b := range [][]byte{cb, mb} {
			if !s.HasBlob(sha256Hash(b)) {
				if _, _, err := s.putBytes(b); err != nil {
					return false, err
				}
			}
		}
		refs = refsOf(idx, mh)
		if hasEntry(idx, mh) {
			return false, nil
		}
		idx.Manifests = append(idx.Manifests, desc)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return &Image{ID: ch, Manifest: desc, Config: cfg, Layers: m.Layers, Refs: refs}, nil
}

// Image reads the image whose manifest digest is manifest, whether or not
// index.json references it. An unknown manifest wraps ErrNotFound.
func (s *Store) Image(manifest v1.Hash) (*Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	return s.image(idx, manifest)
}

func (s *Store) image(idx *v1.IndexManifest, mh v1.Hash) (*Image, error) {
	mb, err := s.readBlob(mh)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", mh, err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("image %s: parse manifest: %w", mh, err)
	}
	if m.MediaType != "" && !m.MediaType.IsImage() {
		return nil, fmt.Errorf("image %s: media type %s is not an image manifest", mh, m.MediaType)
	}
	cb, err := s.readBlob(m.Config.Digest)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", mh, err)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, fmt.Errorf("image %s: parse config: %w", mh, err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = types.OCIManifestSchema1
	}
	return &Image{
		ID:       m.Config.Digest,
		Manifest: v1.Descriptor{MediaType: mt, Size: int64(len(mb)), Digest: mh},
		Config:   &cfg,
		Layers:   m.Layers,
		Refs:     refsOf(idx, mh),
	}, nil
}

// Images returns one Image per distinct image manifest in index.json, in
// index order, each with all its Refs. Entries that are not image manifests
// (e.g. nested indexes copied in by other tools) are skipped, as are entries
// whose blobs are missing or unreadable.
func (s *Store) Images() ([]*Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var out []*Image
	seen := map[v1.Hash]bool{}
	for _, d := range idx.Manifests {
		if seen[d.Digest] || !isImageEntry(d) {
			continue
		}
		seen[d.Digest] = true
		img, err := s.image(idx, d.Digest)
		if err != nil {
			continue
		}
		out = append(out, img)
	}
	return out, nil
}

func isImageEntry(d v1.Descriptor) bool {
	return d.MediaType == "" || d.MediaType.IsImage()
}

// NormalizeRef returns ref with ":latest" appended when it has neither a tag
// nor a digest ("app" -> "app:latest", "host:5000/app" ->
// "host:5000/app:latest"). Anything else is returned as given.
func NormalizeRef(ref string) string {
	if strings.Contains(ref, "@") {
		return ref
	}
	name := ref
	if i := strings.LastIndex(ref, "/"); i >= 0 {
		name = ref[i+1:]
	}
	if strings.Contains(name, ":") {
		return ref
	}
	return ref + ":latest"
}

func validRef(ref string) error {
	if ref == "" || strings.TrimSpace(ref) != ref || strings.ContainsAny(ref, " \t\n\r\x00") {
		return fmt.Errorf("invalid ref %q", ref)
	}
	return nil
}

// Tag points ref at img's manifest. ref is normalized with NormalizeRef.
// The index.json entry whose ref name equals ref is replaced (an image that
// thereby loses its last ref leaves index.json and becomes garbage for GC),
// and an untagged entry of img's manifest is dropped since the new tag now
// holds it. index.json is rewritten atomically under the index lock.
func (s *Store) Tag(ref string, img *Image) error {
	if err := validRef(ref); err != nil {
		return err
	}
	if img == nil {
		return errors.New("tag: nil image")
	}
	ref = NormalizeRef(ref)
	desc := img.Manifest
	if desc.MediaType == "" {
		desc.MediaType = types.OCIManifestSchema1
	}
	desc.Annotations = map[string]string{AnnotationRefName: ref}
	desc.URLs, desc.Platform, desc.Data, desc.ArtifactType = nil, nil, nil, ""
	return s.updateIndex(func(idx *v1.IndexManifest) (bool, error) {
		// Checked under the lock, so GC cannot collect any of it meanwhile:
		// a tag never names an image with a blob missing.
		if !s.HasBlob(desc.Digest) {
			return false, fmt.Errorf("tag %s: manifest %s: %w", ref, desc.Digest, ErrNotFound)
		}
		if why := s.incomplete(idx, desc.Digest); why != "" {
			return false, fmt.Errorf("tag %s: %s: %w", ref, why, ErrNotFound)
		}
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			name := d.Annotations[AnnotationRefName]
			if name == ref || (name == "" && d.Digest == desc.Digest) {
				continue
			}
			kept = append(kept, d)
		}
		idx.Manifests = append(kept, desc)
		return true, nil
	})
}

// Untag removes ref (normalized with NormalizeRef) from index.json. An
// absent ref is an error wrapping ErrNotFound. If it was the image's last
// ref, the image leaves index.json and its blobs become garbage for GC.
func (s *Store) Untag(ref string) error {
	if err := validRef(ref); err != nil {
		return err
	}
	ref = NormalizeRef(ref)
	return s.updateIndex(func(idx *v1.IndexManifest) (bool, error) {
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			if d.Annotations[AnnotationRefName] != ref {
				kept = append(kept, d)
			}
		}
		if len(kept) == len(idx.Manifests) {
			return false, fmt.Errorf("untag %s: %w", ref, ErrNotFound)
		}
		idx.Manifests = kept
		return true, nil
	})
}

// Remove drops every index.json entry (tagged or not) of img's manifest.
// Blobs stay until GC. Removing an image that is not in index.json is an
// error wrapping ErrNotFound.
func (s *Store) Remove(img *Image) error {
	if img == nil {
		return errors.New("remove: nil image")
	}
	return s.updateIndex(func(idx *v1.IndexManifest) (bool, error) {
		kept := idx.Manifests[:0]
		for _, d := range idx.Manifests {
			if d.Digest != img.Manifest.Digest {
				kept = append(kept, d)
			}
		}
		if len(kept) == len(idx.Manifests) {
			return false, fmt.Errorf("remove %s: %w", img.Manifest.Digest, ErrNotFound)
		}
		idx.Manifests = kept
		return true, nil
	})
}

// Resolve finds an image by, in this order: ref exactly as given; ref
// normalized with NormalizeRef ("app" -> "app:latest"); full manifest
// digest; full image ID; unique image-ID prefix of at least 4 hex digits.
// Digests and IDs may be given with or without "sha256:". An ambiguous
// prefix is an error listing the candidates; no match wraps ErrNotFound.
func (s *Store) Resolve(nameOrID string) (*Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	for _, ref := range []string{nameOrID, NormalizeRef(nameOrID)} {
		for _, d := range idx.Manifests {
			if d.Annotations[AnnotationRefName] == ref {
				return s.image(idx, d.Digest)
			}
		}
	}
	hx := strings.TrimPrefix(strings.ToLower(nameOrID), algo+":")
	if len(hx) < 4 || len(hx) > 64 || strings.Trim(hx, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("image %q: %w", nameOrID, ErrNotFound)
	}
	if len(hx) == 64 {
		for _, d := range idx.Manifests {
			if d.Digest.Hex == hx && isImageEntry(d) {
				return s.image(idx, d.Digest)
			}
		}
	}
	var matches []*Image
	seenID := map[v1.Hash]bool{}
	seenM := map[v1.Hash]bool{}
	for _, d := range idx.Manifests {
		if seenM[d.Digest] || !isImageEntry(d) {
			continue
		}
		seenM[d.Digest] = true
		img, err := s.image(idx, d.Digest)
		if err != nil {
			continue
		}
		if strings.HasPrefix(img.ID.Hex, hx) && !seenID[img.ID] {
			seenID[img.ID] = true
			matches = append(matches, img)
		}
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("image %q: %w", nameOrID, ErrNotFound)
	case 1:
		return matches[0], nil
	}
	ids := make([]string, len(matches))
	for i, m := range matches {
		ids[i] = m.ID.Hex[:12]
	}
	return nil, fmt.Errorf("image id prefix %q is ambiguous: matches %s", nameOrID, strings.Join(ids, ", "))
}

func refsOf(idx *v1.IndexManifest, mh v1.Hash) []string {
	var refs []string
	for _, d := range idx.Manifests {
		if d.Digest == mh {
			if r := d.Annotations[AnnotationRefName]; r != "" {
				refs = append(refs, r)
			}
		}
	}
	return refs
}

func hasEntry(idx *v1.IndexManifest, mh v1.Hash) bool {
	for _, d := range idx.Manifests {
		if d.Digest == mh {
			return true
		}
	}
	return false
}

func (s *Store) readIndex() (*v1.IndexManifest, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, indexFile))
	if errors.Is(err, fs.ErrNotExist) {
		return emptyIndex(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(s.dir, indexFile), err)
	}
	return &idx, nil
}

func emptyIndex() *v1.IndexManifest {
	return &v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests:     []v1.Descriptor{},
	}
}

// lock takes the exclusive index lock; the returned func releases it.
func (s *Store) lock() (func(), error) {
	unlock, err := fsx.LockFunc(filepath.Join(s.dir, lockFile))
	if err != nil {
		return nil, fmt.Errorf("lock index: %w", err)
	}
	return unlock, nil
}

// updateIndex reads index.json under the lock, lets fn modify it, and
// writes it back atomically if fn reports a change.
func (s *Store) updateIndex(fn func(*v1.IndexManifest) (bool, error)) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	changed, err := fn(idx)
	if err != nil || !changed {
		return err
	}
	if idx.SchemaVersion == 0 {
		idx.SchemaVersion = 2
	}
	if idx.MediaType == "" {
		idx.MediaType = types.OCIImageIndex
	}
	if idx.Manifests == nil {
		idx.Manifests = []v1.Descriptor{}
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("marshal index: %w", err)
	}
	return fsx.WriteFile(filepath.Join(s.dir, indexFile), filepath.Join(s.dir, ingestDir), b, 0o644)
}
