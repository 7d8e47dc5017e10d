package remotecache

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"syscall"
	"time"

	"github.com/lbuild/lbuild/snapshot"
)

// writeMountTar writes the contents of cache-mount directory dir to w as a
// tar: entries sorted by path, regular files, directories and symlinks with
// their modes, owners and modification times (other file types are
// skipped). The same contents give the same bytes, so an unchanged mount
// exports to the same blob.
//
// The mount may be changed meanwhile by a RUN of another build that shares
// it, so everything is read through an os.Root on dir: a name swapped for a
// symlink to a host path is never followed out of the mount, and a regular
// file is opened without following a final symlink and read only if it is
// still the file that was listed.
func writeMountTar(dir string, w io.Writer) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("read cache mount: %w", err)
	}
	defer root.Close()
	tw := tar.NewWriter(w)
	var paths []string
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != "." {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read cache mount: %w", err)
	}
	sort.Strings(paths)
	for _, rel := range paths {
		fi, err := root.Lstat(rel)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return fmt.Errorf("read cache mount: %w", err)
		}
		link := ""
		switch {
		case fi.Mode().IsRegular(), fi.IsDir():
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = root.Readlink(rel); err != nil {
				return fmt.Errorf("read cache mount: %w", err)
			}
		default:
			continue
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = rel
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
		var f *os.File
		if fi.Mode().IsRegular() {
			if f, err = root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0); err != nil {
				return fmt.Errorf("read cache mount %s: %w", rel, err)
			}
			if now, err := f.Stat(); err != nil || !os.SameFile(fi, now) {
				f.Close()
				return fmt.Errorf("read cache mount %s: it changed while being exported", rel)
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			if f != nil {
				f.Close()
			}
			return err
		}
		if f != nil {
			_, err = io.CopyN(tw, f, hdr.Size)
			f.Close()
			if err != nil {
				return fmt.Errorf("read cache mount %s: %w", rel, err)
			}
		}
	}
	return tw.Close()
}

// extractMountTar unpacks a tar written by writeMountTar into dir, with
// snapshot.Untar (the applier that unpacks layers): every path stays inside
// dir, symlinks in the tar cannot lead out.
func extractMountTar(r io.Reader, dir string) error {
	if err := snapshot.Untar(context.Background(), dir, r); err != nil {
		return fmt.Errorf("%w: mount tar: %v", ErrCorrupt, err)
	}
	return nil
}
