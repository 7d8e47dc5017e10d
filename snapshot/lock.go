package snapshot

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lbuild/lbuild/internal/fsx"

	"golang.org/x/sys/unix"
)

// errLocked means another open file description holds the lock.
var errLocked = fsx.ErrLocked

// lockFile flocks path (see fsx.Lock).
func lockFile(path string, how int) (*os.File, error) { return fsx.Lock(path, how) }

// sharedLock is held while creating active snapshots and temp dirs, so that
// Cleanup (which holds it exclusively) never sees one half made.
func (s *snapshotter) sharedLock() (*os.File, error) {
	return lockFile(filepath.Join(s.root, "lock"), unix.LOCK_SH)
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// randomID returns n random characters of [a-z2-7].
func randomID(n int) string {
	b := make([]byte, (n*5+7)/8)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return idEncoding.EncodeToString(b)[:n]
}

// tempDir is a directory under tmp/ owned by this process: tmp/<id> guarded by
// a lock on tmp/<id>.lock. The directory itself is not created.
type tempDir struct {
	path string
	lock *os.File
}

func (s *snapshotter) newTemp(prefix string) (*tempDir, error) {
	g, err := s.sharedLock()
	if err != nil {
		return nil, err
	}
	defer g.Close()
	return s.newTempLocked(prefix)
}

// newTempLocked is newTemp for a caller holding the shared lock.
func (s *snapshotter) newTempLocked(prefix string) (*tempDir, error) {
	for {
		p := filepath.Join(s.root, "tmp", prefix+randomID(16))
		if _, err := os.Lstat(p + ".lock"); err == nil {
			continue
		}
		l, err := lockFile(p+".lock", unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			return nil, fmt.Errorf("lock temp dir: %w", err)
		}
		return &tempDir{path: p, lock: l}, nil
	}
}

// release removes whatever is left of the temp dir and drops the lock.
func (t *tempDir) release() error {
	err := os.RemoveAll(t.path)
	os.Remove(t.path + ".lock")
	t.lock.Close()
	return err
}

// isTempLock reports whether name (an entry of tmp/) is a lock file.
func isTempLock(name string) bool { return strings.HasSuffix(name, ".lock") }
