// Package progress shows a build's steps the way BuildKit's progress modes
// do: "plain" prints one line per event (#N [stage i/n] INSTRUCTION, then
// CACHED or DONE with the duration, RUN output as "#N 0.123 line"); "tty"
// redraws the running step's line with its elapsed time and its last output
// lines.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Writer receives a build's events. Implementations are safe for concurrent use.
type Writer interface {
	// Start announces step id with its label ("[stage 2/5] COPY a /a").
	Start(id int, label string)
	// Log is one line of a step's output (without the newline).
	Log(id int, line string)
	// Cached ends a step that was found in the cache.
	Cached(id int)
	// Done ends a step that ran; err is nil on success.
	Done(id int, err error)
}

// Explainer is a Writer that can show why a step missed the cache (lbuild
// build --explain). Explain comes between the step's Start and its Done.
type Explainer interface {
	// Explain shows line ("files: a modified") under step id, as
	// "#ID MISS line".
	Explain(id int, line string)
}

var (
	_ Explainer = (*Plain)(nil)
	_ Explainer = (*tty)(nil)
)

// New returns a Writer for mode "plain", "tty" or "auto" (tty when out is a terminal).
func New(mode string, out io.Writer) (Writer, error) {
	switch mode {
	case "plain":
		return NewPlain(out), nil
	case "tty":
		return newTTY(out), nil
	case "", "auto":
		if f, ok := out.(*os.File); ok && isTerminal(f) {
			return newTTY(out), nil
		}
		return NewPlain(out), nil
	}
	return nil, fmt.Errorf("unknown progress mode %q: use auto, plain or tty", mode)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Plain prints BuildKit's plain progress.
type Plain struct {
	mu    sync.Mutex
	out   io.Writer
	start map[int]time.Time
}

// NewPlain returns a plain-mode writer.
func NewPlain(out io.Writer) *Plain { return &Plain{out: out, start: map[int]time.Time{}} }

func (p *Plain) Start(id int, label string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.start[id] = time.Now()
	fmt.Fprintf(p.out, "#%d %s\n", id, label)
}

func (p *Plain) Log(id int, line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "#%d %.3f %s\n", id, time.Since(p.start[id]).Seconds(), line)
}

func (p *Plain) Explain(id int, line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "#%d MISS %s\n", id, line)
}

func (p *Plain) Cached(id int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "#%d CACHED\n\n", id)
}

func (p *Plain) Done(id int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := time.Since(p.start[id]).Seconds()
	if err != nil {
		fmt.Fprintf(p.out, "#%d ERROR: %v\n\n", id, err)
		return
	}
	fmt.Fprintf(p.out, "#%d DONE %.1fs\n\n", id, d)
}

// tty redraws the current step's line and its last output lines.
type tty struct {
	mu     sync.Mutex
	out    io.Writer
	id     int
	label  string
	start  time.Time
	tail   []string
	miss   string // the step's explanation, drawn under its line
	drawn  int    // lines drawn by the last redraw, erased by the next
	stop   chan struct{}
	ticker *time.Ticker
}

const ttyTail = 6

func newTTY(out io.Writer) *tty { return &tty{out: out} }

func (t *tty) Start(id int, label string) {
	t.mu.Lock()
	t.id, t.label, t.start, t.tail, t.miss = id, label, time.Now(), nil, ""
	t.redraw("")
	t.mu.Unlock()
	t.stop = make(chan struct{})
	t.ticker = time.NewTicker(100 * time.Millisecond)
	go func(stop chan struct{}, tk *time.Ticker) {
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				t.mu.Lock()
				t.redraw("")
				t.mu.Unlock()
			}
		}
	}(t.stop, t.ticker)
}

func (t *tty) Log(id int, line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tail = append(t.tail, line)
	if len(t.tail) > ttyTail {
		t.tail = t.tail[len(t.tail)-ttyTail:]
	}
	t.redraw("")
}

func (t *tty) Explain(id int, line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.miss = fmt.Sprintf("#%d MISS %s", id, line)
	t.redraw("")
}

func (t *tty) finish(status string) {
	if t.stop != nil {
		close(t.stop)
		t.ticker.Stop()
		t.stop = nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tail = nil
	t.redraw(status)
	t.drawn = 0
}

func (t *tty) Cached(id int) { t.finish("CACHED") }

func (t *tty) Done(id int, err error) {
	if err != nil {
		t.finish("ERROR: " + err.Error())
		return
	}
	t.finish(fmt.Sprintf("%.1fs", time.Since(t.start).Seconds()))
}

// redraw erases what it drew last and draws the step line (with status, or
// the running time) and the output tail. Callers hold t.mu.
func (t *tty) redraw(status string) {
	var b strings.Builder
	for i := 0; i < t.drawn; i++ {
		b.WriteString("\x1b[1A\x1b[2K")
	}
	if status == "" {
		status = fmt.Sprintf("%.1fs", time.Since(t.start).Seconds())
	}
	fmt.Fprintf(&b, "\r\x1b[2K => #%d %s  %s\n", t.id, t.label, status)
	drawn := 1
	if t.miss != "" {
		l := t.miss
		if r := []rune(l); len(r) > 120 {
			l = string(r[:117]) + "..."
		}
		fmt.Fprintf(&b, "\x1b[2K    %s\n", l)
		drawn++
	}
	for _, l := range t.tail {
		if len(l) > 120 {
			l = l[:120]
		}
		fmt.Fprintf(&b, "\x1b[2K    %s\n", l)
	}
	t.drawn = drawn + len(t.tail)
	io.WriteString(t.out, b.String())
}
