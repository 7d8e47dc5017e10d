package remotecache

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// writeMountTar writes the contents of cache-mount directory dir to w as a
// tar: entries sorted by path, regular files, directories and symlinks with
// their modes, owners and modification times (other file types are
// skipped). The same contents give the same bytes, so an unchanged mount
// exports to the same blob.
func writeMountTar(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read cache mount: %w", err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("read cache mount: %w", err)
		}
		link := ""
		switch {
		case fi.Mode().IsRegular(), fi.IsDir():
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return fmt.Errorf("read cache mount: %w", err)
			}
		default:
			continue
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.ModTime = fi.ModTime().Truncate(time.Second)
		hdr.Format = tar.FormatPAX
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return fmt.Errorf("read cache mount: %w", err)
			}
			_, err = io.CopyN(tw, f, hdr.Size)
			f.Close()
			if err != nil {
				return fmt.Errorf("read cache mount %s: %w", rel, err)
			}
		}
	}
	return tw.Close()
}

// extractMountTar unpacks a tar written by writeMountTar into dir. Every
// path stays inside dir (symlinks in the tar cannot lead out).
func extractMountTar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	type dirTime struct {
		path string
		t    time.Time
	}
	var dirs []dirTime
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: mount tar: %v", ErrCorrupt, err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if name == "" || name == "." {
			continue
		}
		p, err := securejoin.SecureJoin(dir, name)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		mode := fs.FileMode(hdr.Mode).Perm() | fs.FileMode(hdr.Mode)&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(p, 0o700); err != nil && !os.IsExist(err) {
				return err
			}
			dirs = append(dirs, dirTime{p, hdr.ModTime})
		case tar.TypeReg:
			os.RemoveAll(p)
			f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.CopyN(f, tr, hdr.Size)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%w: mount tar: %s: %v", ErrCorrupt, name, err)
			}
		case tar.TypeSymlink:
			os.RemoveAll(p)
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				return err
			}
			os.Lchown(p, hdr.Uid, hdr.Gid)
			continue
		default:
			continue
		}
		os.Lchown(p, hdr.Uid, hdr.Gid)
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			os.Chtimes(p, hdr.ModTime, hdr.ModTime)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Chtimes(dirs[i].path, dirs[i].t, dirs[i].t)
	}
	return nil
}
