package builder

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/lbuild/lbuild/internal/compression"
	"github.com/lbuild/lbuild/internal/rootpath"
	"github.com/lbuild/lbuild/snapshot"
)

// openArchive returns the tar stream of the file at p if it is a tar
// archive, plain or compressed with gzip, bzip2, xz or zstd (decompressed,
// and bounded as a likely bomb past expansionLimit); nil if it is not an
// archive. p is a source selectSources checked, so a symlink there is not
// followed.
func openArchive(p string) (io.Reader, io.Closer, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	zr, kind, err := compression.Sniff(f)
	if err != nil {
		f.Close()
		return nil, nil, nil // looked compressed but is not: copied as a file
	}
	closer := multiCloser{zr, f}
	var r io.Reader = zr
	if kind != compression.None {
		limit := int64(minArchiveExpansion)
		if fi, err := f.Stat(); err == nil {
			limit = expansionLimit(fi.Size())
		}
		r = &compression.Bounded{R: r, Limit: func() int64 { return limit }, Err: func(limit int64) error {
			return fmt.Errorf("archive %s expands to more than %d bytes (the bound is %dx its size, at least %d bytes): %w; if it is genuine, COPY it and unpack it in a RUN step",
				p, limit, maxArchiveRatio, archiveExpansionFloor, errArchiveTooLarge)
		}}
	}
	// A tar archive has "ustar" at offset 257 of its first block.
	bb := bufio.NewReaderSize(r, 64<<10)
	block, err := bb.Peek(512)
	if err != nil || !bytes.HasPrefix(block[257:], []byte("ustar")) {
		closer.Close()
		return nil, nil, nil
	}
	return bb, closer, nil
}

// ADD of a local archive extracts at most
// max(minArchiveExpansion, maxArchiveRatio × the archive's size): past that
// the build fails, as the archive is likely a decompression bomb. Both the
// decompressed stream and the file contents written (a sparse entry expands
// too) are bounded.
const (
	maxArchiveRatio     = 100
	minArchiveExpansion = 1 << 30 // 1 GiB
)

// archiveExpansionFloor is minArchiveExpansion; tests lower it.
var archiveExpansionFloor int64 = minArchiveExpansion

func expansionLimit(size int64) int64 {
	return max(archiveExpansionFloor, maxArchiveRatio*size)
}

// errArchiveTooLarge is wrapped by the error of an archive over its bound.
var errArchiveTooLarge = errors.New("refusing a likely decompression bomb")

type closeFunc func()

func (c closeFunc) Close() error { c(); return nil }

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	for _, c := range m {
		c.Close()
	}
	return nil
}

// extractArchive unpacks the archive at src into dest inside root, as ADD
// does, with snapshot.Untar (the applier that unpacks layers). It reports
// false (and changes nothing) when src is not an archive. Entries cannot
// leave dest: names and link targets resolve inside it.
func extractArchive(root, dest, src string, uid, gid uint32, chown bool) (bool, error) {
	r, closer, err := openArchive(src)
	if err != nil || r == nil {
		return false, err
	}
	defer closer.Close()
	limit := int64(minArchiveExpansion)
	if fi, err := os.Stat(src); err == nil {
		limit = expansionLimit(fi.Size())
	}
	if err := mkdirAll(root, dest, uid, gid, chown); err != nil {
		return true, err
	}
	abs, err := rootpath.Join(root, dest)
	if err != nil {
		return true, err
	}
	opts := []snapshot.UntarOpt{snapshot.WithMaxBytes(limit)}
	if chown {
		opts = append(opts, snapshot.WithOwner(int(uid), int(gid)))
	}
	err = snapshot.Untar(context.Background(), abs, r, opts...)
	if errors.Is(err, snapshot.ErrTooLarge) {
		err = fmt.Errorf("archive %s expands to more than %d bytes (the bound is %dx its size, at least %d bytes): %w; if it is genuine, COPY it and unpack it in a RUN step",
			src, limit, maxArchiveRatio, archiveExpansionFloor, errArchiveTooLarge)
	}
	if err != nil {
		return true, fmt.Errorf("extract %s: %w", filepath.Base(src), err)
	}
	return true, nil
}
