package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// FileIndex remembers the sha256 of regular files by absolute path, with the
// stat data (size, mtime ns, ctime ns, inode, device) the file had when it
// was hashed. A file whose stat data is unchanged is not read again.
//
// Racily clean files: a write that lands in the same timestamp tick as the
// hashing leaves the stat data unchanged. So an entry is not trusted (the
// file is hashed again next time) when its mtime is less than 2 s before the
// time hashing began, or its ctime is less than 100 ms before it (2 s when
// the ctime has no sub-second part, i.e. on a coarse file system). The ctime
// guard covers a writer that restores the old mtime right after writing.
//
// The index is persisted as one file, loaded once by OpenFileIndex and
// written once by Save, atomically. Entries not used for 30 days are dropped
// on Save. A FileIndex is safe for concurrent use.
type FileIndex struct {
	path string
	now  func() time.Time

	mu    sync.Mutex
	m     map[string]fileEntry
	dirty bool

	hits, misses atomic.Int64
}

type fileStat struct {
	size         int64
	mtime, ctime int64 // ns since the epoch
	ino, dev     uint64
}

type fileEntry struct {
	fileStat
	hashedAt int64 // ns since the epoch, taken before reading
	used     int64 // s since the epoch, last Sum or hit
	sum      [32]byte
}

const (
	racyMtime       = 2 * time.Second
	racyCtime       = 100 * time.Millisecond
	racyCtimeCoarse = 2 * time.Second
	unusedExpiry    = 30 * 24 * time.Hour
	usedRefresh     = 24 * time.Hour // a hit rewrites the index at most this often

	indexMagic = "LBFIDX1\n"
	hashBufLen = 1 << 20
)

// OpenFileIndex loads the index persisted at path. A missing file gives an
// empty index; so does a corrupt one, with a logged warning. An empty path
// gives an in-memory index whose Save does nothing.
func OpenFileIndex(path string) (*FileIndex, error) {
	x := &FileIndex{path: path, now: time.Now, m: map[string]fileEntry{}}
	if path == "" {
		return x, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return x, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open file index: %w", err)
	}
	m, err := decodeIndex(b)
	if err != nil {
		logrus.Warnf("file index %s is corrupt, starting empty: %v", path, err)
		x.dirty = true // replace it on Save
		return x, nil
	}
	x.m = m
	return x, nil
}

func statOf(fi os.FileInfo) (fileStat, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStat{}, false
	}
	return fileStat{
		size:  st.Size,
		mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec,
		ino:   st.Ino,
		dev:   uint64(st.Dev),
	}, true
}

func (e *fileEntry) trusted() bool {
	cwin := racyCtime
	if e.ctime%1e9 == 0 {
		cwin = racyCtimeCoarse
	}
	return e.mtime < e.hashedAt-int64(racyMtime) && e.ctime < e.hashedAt-int64(cwin)
}

// lookup returns the remembered sum of abs if fi matches a trusted entry.
func (x *FileIndex) lookup(abs string, fi os.FileInfo) ([32]byte, bool) {
	st, ok := statOf(fi)
	if !ok {
		return [32]byte{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.m[abs]
	if !ok || e.fileStat != st || !e.trusted() {
		return [32]byte{}, false
	}
	if now := x.now().Unix(); now-e.used > int64(usedRefresh/time.Second) {
		e.used = now
		x.m[abs] = e
		x.dirty = true
	}
	x.hits.Add(1)
	return e.sum, true
}

// Sum returns "sha256:<hex>" of the content of the regular file abs, whose
// Lstat result is fi (nil: Sum calls Lstat). If fi matches a trusted entry
// the file is not read (a hit); otherwise it is hashed with a 1 MiB buffer
// and the entry updated (a miss) unless the file changed while being read.
// A symlink at abs is an error, never followed.
func (x *FileIndex) Sum(abs string, fi os.FileInfo) (string, error) {
	sum, err := x.sum(abs, fi)
	if err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

func (x *FileIndex) sum(abs string, fi os.FileInfo) ([32]byte, error) {
	if fi == nil {
		var err error
		if fi, err = os.Lstat(abs); err != nil {
			return [32]byte{}, fmt.Errorf("hash file: %w", err)
		}
	}
	if !fi.Mode().IsRegular() {
		return [32]byte{}, fmt.Errorf("hash file %s: not a regular file (%v)", abs, fi.Mode().Type())
	}
	if sum, ok := x.lookup(abs, fi); ok {
		return sum, nil
	}
	x.misses.Add(1)
	hashedAt := x.now().UnixNano()
	sum, before, after, err := hashFile(abs)
	if err != nil {
		return [32]byte{}, err
	}
	// Remember the sum only if the file did not change while it was read.
	if before != (fileStat{}) && before == after {
		x.mu.Lock()
		x.m[abs] = fileEntry{fileStat: before, hashedAt: hashedAt, used: hashedAt / 1e9, sum: sum}
		x.dirty = true
		x.mu.Unlock()
	}
	return sum, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, hashBufLen); return &b }}

// hashFile returns the sha256 of abs and its fstat before and after reading.
// It reads only a regular file at abs itself: a symlink there is refused,
// never followed (whatever the caller's stat said), so a checksum reads no
// further than the path the caller checked.
func hashFile(abs string) (sum [32]byte, before, after fileStat, err error) {
	f, err := os.OpenFile(abs, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return sum, before, after, fmt.Errorf("hash file %s: a symlink, not a regular file", abs)
	}
	if err != nil {
		return sum, before, after, fmt.Errorf("hash file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return sum, before, after, fmt.Errorf("hash file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return sum, before, after, fmt.Errorf("hash file %s: not a regular file (%v)", abs, fi.Mode().Type())
	}
	before, _ = statOf(fi)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	h := sha256.New()
	buf := *bp
	for {
		n, rerr := f.Read(buf)
		h.Write(buf[:n])
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return sum, before, after, fmt.Errorf("hash file: %w", rerr)
		}
	}
	if fi, err := f.Stat(); err == nil {
		after, _ = statOf(fi)
	}
	h.Sum(sum[:0])
	return sum, before, after, nil
}

// Stats returns how many Sum calls (and Checksum lookups) were answered
// from the index and how many had to read the file.
func (x *FileIndex) Stats() (hits, misses int) {
	return int(x.hits.Load()), int(x.misses.Load())
}

// Len returns the number of remembered files.
func (x *FileIndex) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.m)
}

// Save writes the index atomically (temp file, fsync, rename) if it changed
// since it was opened, dropping entries unused for 30 days. It does not merge
// with what another process saved meanwhile: the last Save wins, which costs
// at most some rehashing.
func (x *FileIndex) Save() error {
	if x.path == "" {
		return nil
	}
	x.mu.Lock()
	if !x.dirty {
		x.mu.Unlock()
		return nil
	}
	cutoff := x.now().Add(-unusedExpiry).Unix()
	for k, e := range x.m {
		if e.used < cutoff {
			delete(x.m, k)
		}
	}
	b := encodeIndex(x.m)
	x.dirty = false
	x.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(x.path), 0o755); err != nil {
		return fmt.Errorf("save file index: %w", err)
	}
	if err := writeFileAtomic(x.path, b); err != nil {
		x.mu.Lock()
		x.dirty = true
		x.mu.Unlock()
		return fmt.Errorf("save file index: %w", err)
	}
	return nil
}

// The file: magic, uvarint count, then per entry uvarint path length, path,
// uvarint size, varint mtime, varint ctime, uvarint ino, uvarint dev,
// varint hashedAt, varint used, 32-byte sum; then sha256 of all the above.
func encodeIndex(m map[string]fileEntry) []byte {
	b := make([]byte, 0, len(indexMagic)+len(m)*120+32)
	b = append(b, indexMagic...)
	b = binary.AppendUvarint(b, uint64(len(m)))
	for p, e := range m {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
		b = binary.AppendUvarint(b, uint64(e.size))
		b = binary.AppendVarint(b, e.mtime)
		b = binary.AppendVarint(b, e.ctime)
		b = binary.AppendUvarint(b, e.ino)
		b = binary.AppendUvarint(b, e.dev)
		b = binary.AppendVarint(b, e.hashedAt)
		b = binary.AppendVarint(b, e.used)
		b = append(b, e.sum[:]...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

var errShort = errors.New("truncated")

func decodeIndex(b []byte) (map[string]fileEntry, error) {
	if len(b) < len(indexMagic)+32 || !bytes.HasPrefix(b, []byte(indexMagic)) {
		return nil, errors.New("bad header")
	}
	body, tail := b[:len(b)-32], b[len(b)-32:]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], tail) {
		return nil, errors.New("checksum mismatch")
	}
	r := body[len(indexMagic):]
	uv := func() uint64 {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			panic(errShort)
		}
		r = r[n:]
		return v
	}
	sv := func() int64 {
		v, n := binary.Varint(r)
		if n <= 0 {
			panic(errShort)
		}
		r = r[n:]
		return v
	}
	take := func(n uint64) []byte {
		if n > uint64(len(r)) {
			panic(errShort)
		}
		v := r[:n]
		r = r[n:]
		return v
	}
	var m map[string]fileEntry
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				if p != errShort {
					panic(p)
				}
				err = errShort
			}
		}()
		n := uv()
		if n > uint64(len(r)) { // every entry takes more than one byte
			return errShort
		}
		m = make(map[string]fileEntry, n)
		for range n {
			p := string(take(uv()))
			var e fileEntry
			e.size = int64(uv())
			e.mtime = sv()
			e.ctime = sv()
			e.ino = uv()
			e.dev = uv()
			e.hashedAt = sv()
			e.used = sv()
			copy(e.sum[:], take(32))
			m[p] = e
		}
		if len(r) != 0 {
			return errors.New("trailing data")
		}
		return nil
	}()
	return m, err
}

// Prune drops the entries of files that no longer exist and returns how
// many it dropped; Save persists the result.
func (x *FileIndex) Prune() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	for p := range x.m {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			delete(x.m, p)
			n++
		}
	}
	if n > 0 {
		x.dirty = true
	}
	return n
}
