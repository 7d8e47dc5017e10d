package cache

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/internal/fsx"
)

// Manifest is what went into one step's key, kept so that a later build can
// tell why its step missed the cache (lbuild build --explain). A Record
// references its manifest by digest (Record.Manifest); a manifest
// references the list of files its step copied (Files) by digest too, so
// records selecting the same files share one list. Both are plain blobs in
// Manifests and travel with the records they belong to.
type Manifest struct {
	// Inputs are the step's key inputs, with the values of secret-looking
	// variables in Env replaced by a digest (see Redact).
	Inputs Inputs `json:"inputs"`
	// Text is the instruction as written in the Dockerfile (before
	// expansion), Kind its keyword in lower case ("run", "copy").
	Text string `json:"text"`
	Kind string `json:"kind"`
	// Args are the ARGs the step uses, with their values (a digest for a
	// secret-looking name).
	Args []NameValue `json:"args,omitempty"`
	// Env are the ENV variables the step's words expanded (RUN's whole
	// environment is in Inputs.Env), redacted as Args are.
	Env []NameValue `json:"env,omitempty"`
	// FromImage is the ID of the image the stage's FROM resolved to, set on
	// the step that stands directly on it.
	FromImage string `json:"fromImage,omitempty"`
	// FromStage is, for COPY --from=stage, the key of the stage's last
	// step (its key holds only the content copied): the step to blame.
	FromStage Key `json:"fromStage,omitempty"`
	// Files is the digest of the COPY/ADD source list (PutFiles), "" for
	// other steps.
	Files string `json:"files,omitempty"`
}

// NameValue is one variable a step used.
type NameValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// maxFileList bounds what a file list expands to (a 10,000-file context's
// is about 1 MB).
const maxFileList = 256 << 20

// FileRow is one context file a COPY/ADD selected: its path relative to the
// build context (slash separated), its type and permission bits ("file
// 0644"), and what it holds: the sha256 hex of a regular file's content,
// "->target" for a symlink, "" for a directory.
type FileRow struct {
	Path   string
	Mode   string
	Digest string
}

// Manifests keeps manifests, their file lists and two small indexes under
// one directory:
//
//	blobs/sha256/<hex>  manifests (JSON) and file lists (gzip'ed text), named by the sha256 of their bytes
//	next/<hex>          the key last recorded for a (parent key, instruction text) pair
//	last/<name>.json    a builder's note of its previous build (PutLast)
//
// Blobs are content-addressed and immutable: putting one that exists is a
// no-op, so concurrent builds may put the same blob. Every file is written
// atomically (fsx.WriteFile). Manifests is safe for concurrent use.
type Manifests struct {
	dir string
}

// OpenManifests opens (creating if needed) the manifest directory dir.
func OpenManifests(dir string) (*Manifests, error) {
	for _, d := range []string{"blobs/sha256", "next", "last"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("open cache manifests: %w", err)
		}
	}
	return &Manifests{dir: dir}, nil
}

// Dir returns the manifest directory.
func (m *Manifests) Dir() string { return m.dir }

// BlobPath returns where the blob with digest d ("sha256:<hex>") lives, for
// copying blobs along with the records that reference them.
func (m *Manifests) BlobPath(d string) (string, error) {
	hx, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hx) != 64 || strings.Trim(hx, "0123456789abcdef") != "" {
		return "", fmt.Errorf("cache: invalid manifest digest %q", d)
	}
	return filepath.Join(m.dir, "blobs", "sha256", hx), nil
}

// PutBlob stores b and returns its digest ("sha256:<hex>"). Idempotent.
func (m *Manifests) PutBlob(b []byte) (string, error) {
	sum := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(sum[:])
	p, _ := m.BlobPath(d)
	if _, err := os.Stat(p); err == nil {
		return d, nil
	}
	if err := fsx.WriteFile(p, "", b, 0o644); err != nil {
		return "", fmt.Errorf("put manifest blob: %w", err)
	}
	return d, nil
}

// Blob returns the blob with digest d, checked against it. A missing blob is
// an error wrapping ErrNotFound; one whose bytes do not match, ErrCorrupt.
func (m *Manifests) Blob(d string) ([]byte, error) {
	p, err := m.BlobPath(d)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("manifest blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest blob: %w", err)
	}
	if sum := sha256.Sum256(b); "sha256:"+hex.EncodeToString(sum[:]) != d {
		return nil, fmt.Errorf("manifest blob %s: %w: content does not match its digest", d, ErrCorrupt)
	}
	return b, nil
}

// Put stores man and returns its digest.
func (m *Manifests) Put(man *Manifest) (string, error) {
	b, err := json.Marshal(man)
	if err != nil {
		return "", fmt.Errorf("marshal manifest: %w", err)
	}
	return m.PutBlob(b)
}

// Get returns the manifest with digest d (errors as Blob's).
func (m *Manifests) Get(d string) (*Manifest, error) {
	b, err := m.Blob(d)
	if err != nil {
		return nil, err
	}
	var man Manifest
	if err := json.Unmarshal(b, &man); err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %v", d, ErrCorrupt, err)
	}
	return &man, nil
}

// PutFiles stores a file list and returns its digest. rows must be sorted
// by Path without duplicates (SortRows). The list is one line per row,
// "digest\tmode\t"quoted path"", gzip'ed (about 60 bytes a file), so the
// same rows always give the same blob.
func (m *Manifests) PutFiles(rows []FileRow) (string, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	bw := bufio.NewWriter(zw)
	for _, r := range rows {
		bw.WriteString(r.Digest)
		bw.WriteByte('\t')
		bw.WriteString(r.Mode)
		bw.WriteByte('\t')
		bw.WriteString(strconv.Quote(r.Path))
		bw.WriteByte('\n')
	}
	if err := bw.Flush(); err != nil {
		return "", fmt.Errorf("put file list: %w", err)
	}
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("put file list: %w", err)
	}
	return m.PutBlob(buf.Bytes())
}

// Files returns the file list with digest d, sorted by path.
func (m *Manifests) Files(d string) ([]FileRow, error) {
	b, err := m.Blob(d)
	if err != nil {
		return nil, err
	}
	zr, err := compression.Reader(bytes.NewReader(b), compression.Gzip)
	if err != nil {
		return nil, fmt.Errorf("file list %s: %w: %v", d, ErrCorrupt, err)
	}
	var rows []FileRow
	// Bounded: a file list from an imported cache may be a bomb.
	sc := bufio.NewScanner(&compression.Bounded{R: zr, Limit: func() int64 { return maxFileList },
		Err: func(limit int64) error {
			return fmt.Errorf("file list %s: %w: expands to more than %d bytes", d, ErrCorrupt, limit)
		}})
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), "\t", 3)
		if len(f) != 3 {
			return nil, fmt.Errorf("file list %s: %w: bad line", d, ErrCorrupt)
		}
		p, err := strconv.Unquote(f[2])
		if err != nil {
			return nil, fmt.Errorf("file list %s: %w: bad path %s", d, ErrCorrupt, f[2])
		}
		rows = append(rows, FileRow{Path: p, Mode: f[1], Digest: f[0]})
	}
	if err := sc.Err(); err != nil && err != io.EOF {
		return nil, fmt.Errorf("file list %s: %w: %v", d, ErrCorrupt, err)
	}
	return rows, nil
}

// nextPath names the index entry of a (parent, instruction text) pair.
func (m *Manifests) nextPath(parent Key, text string) string {
	h := sha256.New()
	writeField(h, string(parent))
	writeField(h, text)
	return filepath.Join(m.dir, "next", hex.EncodeToString(h.Sum(nil)))
}

// SetNext notes that the step written as text, standing on parent, was
// last recorded under k.
func (m *Manifests) SetNext(parent Key, text string, k Key) error {
	if err := k.Validate(); err != nil {
		return err
	}
	if err := fsx.WriteFile(m.nextPath(parent, text), "", []byte(k), 0o644); err != nil {
		return fmt.Errorf("index manifest: %w", err)
	}
	return nil
}

// Next returns the key last noted by SetNext for (parent, text); none is an
// error wrapping ErrNotFound.
func (m *Manifests) Next(parent Key, text string) (Key, error) {
	b, err := os.ReadFile(m.nextPath(parent, text))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no step %q on %s: %w", text, parent, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("read manifest index: %w", err)
	}
	k := Key(b)
	if err := k.Validate(); err != nil {
		return "", fmt.Errorf("manifest index: %w: %v", ErrCorrupt, err)
	}
	return k, nil
}

// Index notes man, recorded under k, in the (parent, text) index, as
// Put-ing a record does; an importer calls it for every manifest it brings
// in so that explanations find them.
func (m *Manifests) Index(k Key, man *Manifest) error {
	return m.SetNext(man.Inputs.Parent, man.Text, k)
}

func (m *Manifests) lastPath(name string) string {
	sum := sha256.Sum256([]byte(name))
	return filepath.Join(m.dir, "last", hex.EncodeToString(sum[:])+".json")
}

// PutLast stores b as the note named name (any string), replacing the
// previous one atomically; b equal to what is stored costs one read and no
// write.
func (m *Manifests) PutLast(name string, b []byte) error {
	p := m.lastPath(name)
	if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, b) {
		return nil
	}
	if err := fsx.WriteFile(p, "", b, 0o644); err != nil {
		return fmt.Errorf("note last build: %w", err)
	}
	return nil
}

// Last returns the note named name; none is an error wrapping ErrNotFound.
func (m *Manifests) Last(name string) ([]byte, error) {
	b, err := os.ReadFile(m.lastPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("last build %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read last build: %w", err)
	}
	return b, nil
}

// FileChange is one difference between two file lists.
type FileChange struct {
	Path   string `json:"path"`
	Change string `json:"change"` // added, removed, modified or mode
}

// DiffFiles compares two file lists sorted by path (as Files returns them)
// in one merge pass: a path only in new is "added", only in old "removed";
// one whose content or type differs is "modified", one whose permission
// bits alone differ is "mode". Unchanged paths are left out.
func DiffFiles(old, new []FileRow) []FileChange {
	var out []FileChange
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new) || (i < len(old) && old[i].Path < new[j].Path):
			out = append(out, FileChange{old[i].Path, "removed"})
			i++
		case i == len(old) || new[j].Path < old[i].Path:
			out = append(out, FileChange{new[j].Path, "added"})
			j++
		default:
			o, n := old[i], new[j]
			ot, _, _ := strings.Cut(o.Mode, " ")
			nt, _, _ := strings.Cut(n.Mode, " ")
			switch {
			case o.Digest != n.Digest || ot != nt:
				out = append(out, FileChange{n.Path, "modified"})
			case o.Mode != n.Mode:
				out = append(out, FileChange{n.Path, "mode"})
			}
			i++
			j++
		}
	}
	return out
}

// SortRows sorts rows by path and drops repeated paths (a file selected by
// two sources is listed once).
func SortRows(rows []FileRow) []FileRow {
	sort.Slice(rows, func(a, b int) bool { return rows[a].Path < rows[b].Path })
	out := rows[:0]
	for i, r := range rows {
		if i > 0 && r.Path == rows[i-1].Path {
			continue
		}
		out = append(out, r)
	}
	return out
}

// FileSet is a checksummed source selection (ChecksumSet), kept so that
// its rows can be listed if the step runs, without reading a file again.
type FileSet struct {
	entries []Entry
	infos   []os.FileInfo
	sums    [][32]byte
}

// ChecksumSet is Checksum that also returns the selection, for Rows.
func ChecksumSet(x *FileIndex, entries []Entry) (string, *FileSet, error) {
	sum, infos, sums, err := checksum(x, entries)
	if err != nil {
		return "", nil, err
	}
	return sum, &FileSet{entries: entries, infos: infos, sums: sums}, nil
}

// Rows lists the set's files with paths relative to base (the build
// context), sorted, each once. An entry outside base keeps its absolute path.
func (s *FileSet) Rows(base string) ([]FileRow, error) {
	rows := make([]FileRow, 0, len(s.entries))
	for i, e := range s.entries {
		p, err := filepath.Rel(base, e.Abs)
		if err != nil || p == ".." || strings.HasPrefix(p, "../") {
			p = e.Abs
		}
		mode := s.infos[i].Mode()
		r := FileRow{Path: filepath.ToSlash(p), Mode: fileType(mode) + " " + fmt.Sprintf("%04o", unixPerm(mode))}
		switch {
		case mode.IsRegular():
			r.Digest = hex.EncodeToString(s.sums[i][:])
		case mode&fs.ModeSymlink != 0:
			t, err := os.Readlink(e.Abs)
			if err != nil {
				return nil, fmt.Errorf("list sources: %w", err)
			}
			r.Digest = "->" + t
		}
		rows = append(rows, r)
	}
	return SortRows(rows), nil
}

// SecretName reports whether a variable's name looks like it holds a
// secret: it contains TOKEN, PASSWORD, SECRET or KEY, in any case.
func SecretName(name string) bool {
	u := strings.ToUpper(name)
	for _, w := range []string{"TOKEN", "PASSWORD", "SECRET", "KEY"} {
		if strings.Contains(u, w) {
			return true
		}
	}
	return false
}

// Redact returns value, or for a secret-looking name a digest of name and
// value ("redacted:sha256:<hex>"): equal values still compare equal, and no
// more is learnt from it than from the cache key, which hashes the value too.
func Redact(name, value string) string {
	if !SecretName(name) {
		return value
	}
	h := sha256.New()
	writeField(h, name)
	writeField(h, value)
	return "redacted:sha256:" + hex.EncodeToString(h.Sum(nil))
}
