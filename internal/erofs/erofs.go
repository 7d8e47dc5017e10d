// Package erofs indexes an uncompressed OCI layer tar as an EROFS image, so
// a layer stored once, as its tar, can be mounted read-only without being
// unpacked (what erofs-utils' tar index mode and containerd's EROFS
// snapshotter do).
//
// The image Build writes holds only metadata: extended (64-byte) inodes
// with inline xattrs, directories and symlink targets (inline after their
// inode when they fit its block). Each regular file's content is one chunk
// that points into the tar itself, which the kernel reads as the image's
// extra device (device 1): tar content starts on 512-byte boundaries, and
// the image uses 512-byte blocks. The image takes about 100 bytes per file.
//
// The image presents the layer in overlay form, exactly as lbuild's layer
// applier (package snapshot) unpacks it, so it can serve as an overlayfs
// lowerdir: a whiteout ".wh.x" is a 0/0 character device x, ".wh..wh..opq"
// is the xattr trusted.overlay.opaque="y" on its directory, PAX
// SCHILY.xattr.* records are xattrs (user.*, trusted.* and security.*;
// trusted.overlay.* from the tar is ignored), hard links share an inode, and
// a later entry for a path replaces the earlier one. Directories the tar
// does not name (the root, missing parents) are 0755 and root's, and they
// and whiteouts get the time of the Build, as the applier gives them the
// time of the unpack.
//
// What the applier would do differently, or refuse, Build refuses with an
// error wrapping errors.ErrUnsupported, so the caller unpacks the tar
// instead: sparse files, paths through symlinks or non-directories, unsafe
// names, xattrs outside user/trusted/security, user.* xattrs on devices.
package erofs

import (
	"archive/tar"
	"fmt"
	"io"
	"time"
)

// counter counts the bytes read from (or seeked over in) a tar. It is a
// Seeker only when the tar is, so archive/tar skips file content by seeking.
type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type seekCounter struct {
	counter
	s    io.Seeker
	base int64
}

func (c *seekCounter) Seek(off int64, whence int) (int64, error) {
	p, err := c.s.Seek(off, whence)
	if err == nil {
		c.n = p - c.base
	}
	return p, err
}

// Build reads an uncompressed layer tar from r (exactly the bytes of the
// tar file that will be device 1 of the image, from its first byte) and
// writes the EROFS metadata image to w. If r is an io.Seeker, file content
// is seeked over rather than read. An entry Build cannot map gives an error
// wrapping errors.ErrUnsupported (see the package comment); w then holds
// nothing useful.
func Build(w io.Writer, r io.Reader) error {
	c := &counter{r: r}
	var src io.Reader = c
	if s, ok := r.(io.Seeker); ok {
		if base, err := s.Seek(0, io.SeekCurrent); err == nil {
			sc := &seekCounter{counter: counter{r: r}, s: s, base: base}
			c, src = &sc.counter, sc
		}
	}
	t := newTree(time.Now())
	tr := tar.NewReader(src)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		// archive/tar reads headers (PAX and GNU long names included) in
		// whole 512-byte blocks and has read nothing of the content yet.
		if hdr.Typeflag == tar.TypeReg && c.n%blkSize != 0 {
			return fmt.Errorf("tar entry %q: content at offset %d, not on a 512-byte boundary", hdr.Name, c.n)
		}
		if err := t.add(hdr, c.n); err != nil {
			return err
		}
	}
	// The tar's end (trailing zero blocks and any padding) is device 1's too.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return fmt.Errorf("read tar: %w", err)
	}
	return t.write(w, c.n)
}
