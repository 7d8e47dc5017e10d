package builder

import (
	"errors"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// devPair is a (source, destination) pair of filesystems (st_dev).
type devPair struct{ src, dst uint64 }

// noKernelCopy holds the filesystem pairs copy_file_range failed between
// (typically a context on ext4 and a snapshot on overlayfs: EXDEV), so a
// COPY of 10,000 files tries it once, not 10,000 times.
var noKernelCopy sync.Map // devPair -> struct{}

// copyBufs are the buffers of the read/write fallback, reused across files.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyContents copies everything r yields to out. From a regular file it
// uses copy_file_range (the kernel copies, or clones, the data) unless that
// failed before between the same two filesystems; otherwise, or when the
// kernel copies nothing, a read/write loop over a pooled buffer.
func copyContents(out *os.File, r io.Reader) error {
	if src, ok := r.(*os.File); ok {
		done, err := kernelCopy(out, src)
		if done || err != nil {
			return err
		}
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// Hide out's ReadFrom (and r's WriteTo), which would try the
	// kernel copy again.
	_, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{r}, *bp)
	return err
}

// kernelCopy copies src to out with copy_file_range. done is false, with
// nothing written, when the caller must copy by hand: the kernel cannot
// copy between these filesystems (remembered) or copied nothing from a
// file that is not empty (procfs and the like).
func kernelCopy(out, src *os.File) (done bool, err error) {
	var ss, ds unix.Stat_t
	if unix.Fstat(int(src.Fd()), &ss) != nil || unix.Fstat(int(out.Fd()), &ds) != nil ||
		ss.Mode&unix.S_IFMT != unix.S_IFREG {
		return false, nil
	}
	return kernelCopyFd(int(out.Fd()), int(src.Fd()), devPair{src: ss.Dev, dst: ds.Dev}, ss.Size, out.Name())
}

// kernelCopyFd is kernelCopy on descriptors: pair names their filesystems
// (for the memo), size is the source's, name is out's for errors.
func kernelCopyFd(out, src int, pair devPair, size int64, name string) (done bool, err error) {
	if _, bad := noKernelCopy.Load(pair); bad {
		return false, nil
	}
	var total int64
	for {
		n, err := unix.CopyFileRange(src, nil, out, nil, 1<<30, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if total == 0 && kernelCopyUnsupported(err) {
				noKernelCopy.Store(pair, struct{}{})
				return false, nil
			}
			return false, &os.PathError{Op: "copy_file_range", Path: name, Err: err}
		}
		if n == 0 {
			if total == 0 && size > 0 {
				return false, nil
			}
			return true, nil
		}
		total += int64(n)
	}
}

// copyFd copies the regular file open at src, from its current offset to
// its end, to out: with copy_file_range as kernelCopy does, else with
// sendfile, else a read/write loop over a pooled buffer. pair and size are as for
// kernelCopyFd; srcName and name name src and out in errors.
func copyFd(out, src int, pair devPair, size int64, srcName, name string) error {
	done, err := kernelCopyFd(out, src, pair, size, name)
	if done || err != nil {
		return err
	}
	if done, err := sendFile(out, src, pair, name); done || err != nil {
		return err
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := unix.Read(src, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "read", Path: srcName, Err: err}
		}
		if n == 0 {
			return nil
		}
		for b := buf[:n]; len(b) > 0; {
			w, err := unix.Write(out, b)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return &os.PathError{Op: "write", Path: name, Err: err}
			}
			if w == 0 {
				return &os.PathError{Op: "write", Path: name, Err: io.ErrShortWrite}
			}
			b = b[w:]
		}
	}
}

// kernelCopyUnsupported reports whether copy_file_range's error means it
// cannot work here (rather than an I/O error to report).
func kernelCopyUnsupported(err error) bool {
	for _, e := range []error{unix.EXDEV, unix.EINVAL, unix.EOPNOTSUPP, unix.ENOSYS, unix.EPERM, unix.EBADF} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// noSendfile holds the filesystem pairs sendfile failed between.
var noSendfile sync.Map // devPair -> struct{}

// sendFile copies src to out with sendfile (the kernel moves the pages
// through a pipe: no copy into user memory). done is false, with nothing
// written, when it cannot (remembered for the pair).
func sendFile(out, src int, pair devPair, name string) (done bool, err error) {
	if _, bad := noSendfile.Load(pair); bad {
		return false, nil
	}
	var total int64
	for {
		n, err := unix.Sendfile(out, src, nil, 1<<30)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			if total == 0 && kernelCopyUnsupported(err) {
				noSendfile.Store(pair, struct{}{})
				return false, nil
			}
			return false, &os.PathError{Op: "sendfile", Path: name, Err: err}
		}
		if n == 0 {
			return true, nil
		}
		total += int64(n)
	}
}
