package parser

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// FuzzParse: parsing any bytes, then planning the stages as the builder
// does (target lookup, FROM and global ARG expansion, ONBUILD triggers),
// never panics; every failure is one *Error line naming the file.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"FROM scratch\n",
		"ARG BASE=busybox\nFROM ${BASE} AS build\nRUN echo hi\nFROM build\nCOPY --from=build /a /b\n",
		"FROM scratch\n# check=error=true\nCOPY a /a\n",
		"# check=skip=all\n# escape=`\nFROM scratch\nRUN echo `\n  hi\n",
		"# syntax=docker/dockerfile:1\nFROM busybox\nRUN <<EOF\necho a\nEOF\n",
		"FROM --platform=$BUILDPLATFORM busybox AS a\nONBUILD RUN echo x\nFROM a\nHEALTHCHECK CMD true\n",
		"FROM scratch as x\nMAINTAINER me\nENV a b\nLABEL a=b\nCMD echo\nENTRYPOINT [\"sh\"]\n",
		"FROM scratch\nRUN --mount=type=secret,id=s cat /run/secrets/s\nWORKDIR rel\nUSER 1:1\nEXPOSE 80/tcp\nVOLUME /v\nSTOPSIGNAL 9\nSHELL [\"sh\",\"-c\"]\n",
		"FROM scratch\nADD --chmod=755 http://x/y /z\nCOPY --chown=1:1 --link a b\n",
		"FROM scratch\nRUN a \\\n\n  b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		df, err := Parse("Dockerfile", data)
		if errors.Is(err, errPanic) {
			t.Fatal(err)
		}
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v is not a *parser.Error", err, err)
			}
			if !strings.HasPrefix(err.Error(), "Dockerfile") {
				t.Fatalf("error does not name the file: %q", err)
			}
			return
		}
		if len(df.Stages) == 0 {
			t.Fatal("a parsed Dockerfile has a stage")
		}
		for _, w := range df.Warnings {
			_ = w.String()
		}
		planStages(t, df)
	})
}

// planStages walks df as the builder plans a build, checking lookups agree.
func planStages(t *testing.T, df *Dockerfile) {
	if _, err := df.Target(""); err != nil {
		t.Fatalf("default target: %v", err)
	}
	lex := df.Lex()
	env := shell.EnvsFromSlice([]string{"BUILDPLATFORM=linux/amd64", "TARGETARCH=amd64"})
	for _, a := range df.MetaArgs {
		for _, kv := range a.Args {
			if kv.Value != nil {
				_, _, _ = lex.ProcessWord(*kv.Value, env)
			}
		}
		_ = df.At(&a, errors.New("x")).Error()
	}
	for i, st := range df.Stages {
		if st.Index != i {
			t.Fatalf("stage %d has index %d", i, st.Index)
		}
		if s, ok := df.Stage(fmt.Sprint(i)); !ok || (s.Index != i && s.Name != fmt.Sprint(i)) {
			t.Fatalf("stage %d not found by index", i)
		}
		if st.Name != "" {
			if s, err := df.Target(strings.ToUpper(st.Name)); err != nil || s.Name != st.Name {
				t.Fatalf("stage %q not found by name: %v", st.Name, err)
			}
		}
		_, _, _ = lex.ProcessWord(st.BaseName, env)
		_, _, _ = lex.ProcessWord(st.Platform, env)
		_ = st.Line()
		for _, c := range st.Commands {
			_ = Line(c)
			_ = df.At(c, errors.New("x")).Error()
			if ob, ok := c.(*instructions.OnbuildCommand); ok {
				if _, err := ParseTrigger(ob.Expression); errors.Is(err, errPanic) {
					t.Fatal(err)
				}
			}
		}
	}
	if _, err := df.Target("no such stage name"); err == nil {
		t.Fatal("unknown target found")
	}
}

// FuzzParseTrigger: an image's ONBUILD triggers are untrusted input.
func FuzzParseTrigger(f *testing.F) {
	for _, s := range []string{"COPY . /app", "RUN echo hi", "# check=error=true\nRUN x", "FROM x", "ONBUILD RUN x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		if _, err := ParseTrigger(expr); errors.Is(err, errPanic) {
			t.Fatal(err)
		}
	})
}
