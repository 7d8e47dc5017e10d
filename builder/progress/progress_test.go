package progress

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestPlain(t *testing.T) {
	var b bytes.Buffer
	p := NewPlain(&b)
	p.Start(1, "[1/2] FROM scratch")
	p.Done(1, nil)
	p.Start(2, "[2/2] RUN make")
	p.Log(2, "compiling")
	p.Done(2, errors.New("exit code 2"))
	p.Start(3, "[2/2] COPY a /a")
	p.Cached(3)
	want := `^#1 \[1/2\] FROM scratch\n#1 DONE \d+\.\ds\n\n#2 \[2/2\] RUN make\n#2 \d+\.\d{3} compiling\n#2 ERROR: exit code 2\n\n#3 \[2/2\] COPY a /a\n#3 CACHED\n\n$`
	if !regexp.MustCompile(want).MatchString(b.String()) {
		t.Errorf("plain output:\n%s", b.String())
	}
}

// The tty view redraws the running step with its last output lines, and
// leaves one line per finished step.
func TestTTY(t *testing.T) {
	var b bytes.Buffer
	w, err := New("tty", &b)
	if err != nil {
		t.Fatal(err)
	}
	w.Start(1, "[1/2] RUN make")
	for i := range 10 {
		w.Log(1, "line "+string(rune('0'+i)))
	}
	mid := b.String()
	w.Done(1, nil)
	w.Start(2, "[2/2] COPY a /a")
	w.Cached(2)
	out := b.String()
	if !strings.Contains(mid, "    line 9") || !strings.Contains(mid, "\x1b[1A\x1b[2K") {
		t.Errorf("running step not redrawn with its output:\n%q", mid)
	}
	// What stays on screen: erase the redrawn parts as a terminal would.
	screen := render(out)
	if len(screen) != 2 || !regexp.MustCompile(`=> #1 \[1/2\] RUN make  \d+\.\ds$`).MatchString(screen[0]) ||
		!strings.HasSuffix(screen[1], "=> #2 [2/2] COPY a /a  CACHED") {
		t.Errorf("final screen %q", screen)
	}
	if _, err := New("fancy", &b); err == nil {
		t.Error("unknown mode must fail")
	}
}

// render applies the cursor-up and erase-line sequences the tty view uses
// and returns the lines left on the screen.
func render(s string) []string {
	var lines []string
	cur := ""
	for i := 0; i < len(s); i++ {
		switch {
		case strings.HasPrefix(s[i:], "\x1b[1A"):
			if cur == "" && len(lines) > 0 {
				cur = lines[len(lines)-1]
				lines = lines[:len(lines)-1]
			}
			i += 3
		case strings.HasPrefix(s[i:], "\x1b[2K"):
			cur = ""
			i += 3
		case s[i] == '\r':
			cur = ""
		case s[i] == '\n':
			lines = append(lines, cur)
			cur = ""
		default:
			cur += string(s[i])
		}
	}
	return lines
}

// An explanation shows under its step, in plain and tty alike, and stays
// on the tty screen once the step is done.
func TestExplain(t *testing.T) {
	var b bytes.Buffer
	p := NewPlain(&b)
	p.Start(7, "[2/3] COPY src /src")
	p.Explain(7, "files: src/main.go modified")
	p.Done(7, nil)
	if want := `^#7 \[2/3\] COPY src /src\n#7 MISS files: src/main.go modified\n#7 DONE \d+\.\ds\n\n$`; !regexp.MustCompile(want).MatchString(b.String()) {
		t.Errorf("plain output:\n%s", b.String())
	}

	b.Reset()
	w, _ := New("tty", &b)
	w.Start(7, "[2/3] COPY src /src")
	w.(Explainer).Explain(7, "files: src/main.go modified")
	w.Log(7, "copying")
	w.Done(7, nil)
	w.Start(8, "[3/3] LABEL a=b")
	w.Cached(8)
	screen := render(b.String())
	if len(screen) != 3 || !strings.HasSuffix(screen[1], "#7 MISS files: src/main.go modified") || !strings.HasSuffix(screen[2], "=> #8 [3/3] LABEL a=b  CACHED") {
		t.Errorf("final screen %q", screen)
	}
}

// Steps of stages built at once run together: the tty view draws each
// with its own output, and a step that ends leaves its line above the
// ones still running; concurrent calls are safe (go test -race).
func TestTTYConcurrentSteps(t *testing.T) {
	var b bytes.Buffer
	w, _ := New("tty", &b)
	w.Start(1, "[a 2/2] RUN make a")
	w.Start(2, "[b 2/2] RUN make b")
	w.Log(1, "out of a")
	w.Log(2, "out of b")
	screen := render(b.String())
	want := []string{" => #1 [a 2/2] RUN make a", "    out of a", " => #2 [b 2/2] RUN make b", "    out of b"}
	if len(screen) != len(want) {
		t.Fatalf("running screen %q", screen)
	}
	for i, w := range want {
		if !strings.HasPrefix(screen[i], w) {
			t.Errorf("running screen line %d = %q, want %q…", i, screen[i], w)
		}
	}
	w.Done(2, nil)
	screen = render(b.String())
	if len(screen) != 3 || !strings.HasPrefix(screen[0], " => #2 [b 2/2] RUN make b  ") ||
		!strings.HasPrefix(screen[1], " => #1 [a 2/2] RUN make a") || screen[2] != "    out of a" {
		t.Errorf("after #2 ended: %q", screen)
	}
	done := make(chan struct{})
	for i := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			id := 10 + i
			w.Start(id, "step")
			w.Log(id, "line")
			w.Done(id, nil)
		}()
	}
	for range 4 {
		<-done
	}
	w.Done(1, nil)
	screen = render(b.String())
	if len(screen) != 6 || !strings.HasPrefix(screen[5], " => #1 [a 2/2] RUN make a  ") {
		t.Errorf("final screen %q", screen)
	}
}
