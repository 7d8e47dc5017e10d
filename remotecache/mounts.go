package remotecache

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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

// extractMountTar unpacks a tar written by writeMountTar into dir, with
// snapshot.Untar (the applier that unpacks layers): every path stays inside
// dir, symlinks in the tar cannot lead out.
func extractMountTar(r io.Reader, dir string) error {
	if err := snapshot.Untar(context.Background(), dir, r); err != nil {
		return fmt.Errorf("%w: mount tar: %v", ErrCorrupt, err)
	}
	return nil
}
