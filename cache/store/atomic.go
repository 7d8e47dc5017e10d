package store

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes b to path so that path holds either its old
// content or all of b, never part of it: a temp file in tmpDir ("" = path's
// own directory, which must be on the same filesystem) is written, synced,
// made 0644 and renamed to path, and path's directory is synced.
func WriteFileAtomic(path, tmpDir string, b []byte) error {
	dir := filepath.Dir(path)
	if tmpDir == "" {
		tmpDir = dir
	}
	f, err := os.CreateTemp(tmpDir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}
