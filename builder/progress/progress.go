// Package progress shows a build's steps the way BuildKit's progress modes
// do: "plain" prints one line per event (#N [stage i/n] INSTRUCTION, then
// CACHED or DONE with the duration, RUN output as "#N 0.123 line"); "tty"
// redraws the running steps' lines (several when stages build at once) with
// their elapsed times and last output lines. Both are safe for concurrent
// use, with any number of steps running.
package progress

import (
	"fmt"
	"io"
	"os"
	"slices"
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

// tty redraws the running steps (several when stages build at once), each
// with its last output lines, and leaves one line per finished step (and
// its explanation).
type tty struct {
	mu     sync.Mutex
	out    io.Writer
	active []*ttyStep // running steps, in start order
	drawn  int        // lines drawn by the last redraw, erased by the next
	stop   chan struct{}
}

// ttyStep is one running step on the tty.
type ttyStep struct {
	id    int
	label string
	start time.Time
	tail  []string
	miss  string // the step's explanation, drawn under its line
}

const ttyTail = 6

func newTTY(out io.Writer) *tty { return &tty{out: out} }

func (t *tty) Start(id int, label string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.active = append(t.active, &ttyStep{id: id, label: label, start: time.Now()})
	if t.stop == nil {
		// Ticks while any step runs, to update the running times.
		t.stop = make(chan struct{})
		go func(stop chan struct{}) {
			tk := time.NewTicker(100 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tk.C:
					t.mu.Lock()
					t.redraw()
					t.mu.Unlock()
				}
			}
		}(t.stop)
	}
	t.redraw()
}

// step returns running step id, or nil. Callers hold t.mu.
func (t *tty) step(id int) *ttyStep {
	for _, s := range t.active {
		if s.id == id {
			return s
		}
	}
	return nil
}

func (t *tty) Log(id int, line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.step(id)
	if s == nil {
		return
	}
	s.tail = append(s.tail, line)
	if len(s.tail) > ttyTail {
		s.tail = s.tail[len(s.tail)-ttyTail:]
	}
	t.redraw()
}

func (t *tty) Explain(id int, line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.step(id); s != nil {
		s.miss = fmt.Sprintf("#%d MISS %s", id, line)
		t.redraw()
	}
}

// finish ends step id: its line (and explanation) stays, with status,
// above the steps still running.
func (t *tty) finish(id int, status func(*ttyStep) string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := slices.IndexFunc(t.active, func(s *ttyStep) bool { return s.id == id })
	if i < 0 {
		return
	}
	s := t.active[i]
	t.active = slices.Delete(t.active, i, i+1)
	var b strings.Builder
	t.erase(&b)
	s.tail = nil
	s.draw(&b, status(s))
	io.WriteString(t.out, b.String())
	t.drawn = 0
	if len(t.active) == 0 && t.stop != nil {
		close(t.stop)
		t.stop = nil
	}
	t.redraw()
}

func (t *tty) Cached(id int) { t.finish(id, func(*ttyStep) string { return "CACHED" }) }

func (t *tty) Done(id int, err error) {
	if err != nil {
		t.finish(id, func(*ttyStep) string { return "ERROR: " + err.Error() })
		return
	}
	t.finish(id, func(s *ttyStep) string { return fmt.Sprintf("%.1fs", time.Since(s.start).Seconds()) })
}

// erase erases what the last redraw drew. Callers hold t.mu.
func (t *tty) erase(b *strings.Builder) {
	for i := 0; i < t.drawn; i++ {
		b.WriteString("\x1b[1A\x1b[2K")
	}
}

// redraw erases what it drew last and draws every running step: its line
// with the running time, its explanation and its output tail. Callers hold
// t.mu.
func (t *tty) redraw() {
	var b strings.Builder
	t.erase(&b)
	t.drawn = 0
	for _, s := range t.active {
		t.drawn += s.draw(&b, fmt.Sprintf("%.1fs", time.Since(s.start).Seconds()))
	}
	io.WriteString(t.out, b.String())
}

// draw writes the step's line with status, its explanation and its output
// tail, and returns how many lines that is.
func (s *ttyStep) draw(b *strings.Builder, status string) int {
	fmt.Fprintf(b, "\r\x1b[2K => #%d %s  %s\n", s.id, s.label, status)
	drawn := 1
	if s.miss != "" {
		l := s.miss
		if r := []rune(l); len(r) > 120 {
			l = string(r[:117]) + "..."
		}
		fmt.Fprintf(b, "\x1b[2K    %s\n", l)
		drawn++
	}
	for _, l := range s.tail {
		if len(l) > 120 {
			l = l[:120]
		}
		fmt.Fprintf(b, "\x1b[2K    %s\n", l)
	}
	return drawn + len(s.tail)
}
