package compression

import "io"

// Counter counts the bytes read through it (the compressed side of a
// stream whose expansion is bounded).
type Counter struct {
	R io.Reader
	N int64
}

// Read implements io.Reader.
func (c *Counter) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}

// Bounded reads the expanded stream R (a decompressor, a tar's entries),
// failing once more than Limit() bytes came through: the decompression-bomb
// guard of ADD, load and layer application. Limit is asked at each read,
// so it may grow with the compressed bytes read so far (a Counter). The
// error, Err(limit), is returned alone and on every later read, so no
// buffer above (a bufio.Reader keeps reading past an error that came with
// data) can read on.
type Bounded struct {
	R     io.Reader
	Limit func() int64
	Err   func(limit int64) error

	n   int64
	err error
}

// Read implements io.Reader.
func (b *Bounded) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.R.Read(p)
	b.n += int64(n)
	if limit := b.Limit(); b.n > limit {
		b.err = b.Err(limit)
		return 0, b.err
	}
	return n, err
}
