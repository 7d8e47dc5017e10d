package parser

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

func TestParseStages(t *testing.T) {
	src := `ARG BASE=scratch
FROM ${BASE} AS Build
COPY a /a
FROM build
ONBUILD COPY b /b
CMD ["sh"]
`
	df, err := Parse("Dockerfile", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(df.Stages) != 2 || len(df.MetaArgs) != 1 {
		t.Fatalf("stages=%d metaArgs=%d", len(df.Stages), len(df.MetaArgs))
	}
	if df.Stages[0].Name != "build" || df.Stages[0].Line() != 2 {
		t.Fatalf("stage 0: %q line %d", df.Stages[0].Name, df.Stages[0].Line())
	}
	if s, ok := df.Stage("BUILD"); !ok || s.Index != 0 {
		t.Fatal("stage lookup by name is case-insensitive")
	}
	if s, ok := df.Stage("1"); !ok || s.Index != 1 {
		t.Fatal("stage lookup by index")
	}
	tg, err := df.Target("")
	if err != nil || tg.Index != 1 {
		t.Fatalf("default target: %v %v", tg, err)
	}
	if _, err := df.Target("nope"); err == nil || !strings.Contains(err.Error(), `"nope" not found`) {
		t.Fatalf("unknown target: %v", err)
	}
	cp, ok := df.Stages[0].Commands[0].(*instructions.CopyCommand)
	if !ok || Line(cp) != 3 {
		t.Fatalf("COPY at line 3: %T %d", df.Stages[0].Commands[0], Line(df.Stages[0].Commands[0]))
	}
	trig, err := ParseTrigger("COPY b /b")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := trig.(*instructions.CopyCommand); !ok {
		t.Fatalf("trigger parsed as %T", trig)
	}
}

// Every bad Dockerfile fails with one line naming file and line.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		line      int
		want      string
	}{
		{"unknown instruction", "FROM scratch\nFROBNICATE x\n", 2, "unknown instruction: FROBNICATE"},
		{"unknown flag", "FROM scratch\nCOPY --bogus=1 a b\n", 2, "unknown flag: --bogus"},
		{"missing dest", "FROM scratch\nCOPY a\n", 2, "COPY requires at least two arguments"},
		{"no from", "COPY a b\n", 1, "FROM"},
		{"empty", "# nothing\n", 1, "no instructions"},
		{"dup stage", "FROM scratch AS a\nFROM scratch AS A\n", 2, "duplicate stage name"},
		{"bad json", "FROM scratch\nCMD [\"a\",\n", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("Dockerfile.x", []byte(tc.src))
			if err == nil {
				if tc.name == "bad json" {
					return // BuildKit treats malformed JSON as shell form, as docker does
				}
				t.Fatal("no error")
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v is not a *parser.Error", err, err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("multi-line error %q", msg)
			}
			if !strings.HasPrefix(msg, "Dockerfile.x") || pe.Line != tc.line || !strings.Contains(msg, tc.want) {
				t.Errorf("got %q (line %d), want line %d containing %q", msg, pe.Line, tc.line, tc.want)
			}
		})
	}
}

func TestIgnorePrecedence(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte("*.log\n"), 0o644)
	df := filepath.Join(dir, "sub", "Dockerfile")
	os.MkdirAll(filepath.Dir(df), 0o755)

	ig, err := LoadIgnore(dir, df)
	if err != nil {
		t.Fatal(err)
	}
	if ex, _ := ig.Excluded("a.log"); !ex {
		t.Fatal("context .dockerignore applies when no Dockerfile-specific one exists")
	}
	os.WriteFile(df+".dockerignore", []byte("secret\n!keep/secret\n"), 0o644)
	ig, err = LoadIgnore(dir, df)
	if err != nil {
		t.Fatal(err)
	}
	if ex, _ := ig.Excluded("a.log"); ex {
		t.Fatal("Dockerfile.dockerignore must replace .dockerignore")
	}
	if ex, _ := ig.Excluded("secret"); !ex {
		t.Fatal("secret excluded")
	}
	if ex, _ := ig.Excluded("keep/secret"); ex {
		t.Fatal("keep/secret re-included")
	}
	if !ig.HasExclusions() {
		t.Fatal("exclusions")
	}
	os.WriteFile(df+".dockerignore", []byte("[\n"), 0o644)
	if _, err := LoadIgnore(dir, df); err == nil {
		t.Fatal("bad pattern must fail")
	}
}

// "# check=" directives are accepted anywhere, as docker build accepts them;
// BuildKit's nil linter used to panic on one after the first instruction.
func TestCheckDirectives(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		rules     []string // warnings expected, by rule
		wantErr   string   // "" = parses
	}{
		{"after first instruction", "FROM scratch\n# check=error=true\nCOPY a /a\n", nil, ""},
		{"skip comment mid-file", "FROM scratch\n# check=skip=all\nMAINTAINER me\n", nil, ""},
		{"at top, clean", "# check=error=true\nFROM scratch\nCOPY a /a\n", nil, ""},
		{"warnings collected", "FROM scratch as base\nMAINTAINER me\n", []string{"FromAsCasing", "MaintainerDeprecated"}, ""},
		{"top skip", "# check=skip=FromAsCasing\nFROM scratch as base\n", nil, ""},
		{"error on warning", "# check=error=true\nFROM scratch\nMAINTAINER me\n", nil, "MaintainerDeprecated"},
		{"error names rules in line order", "# check=error=true\nFROM scratch AS b\nMAINTAINER me\nFROM b as c\n", nil, "Dockerfile:3: lint violation found for rules: MaintainerDeprecated, FromAsCasing ("},
		{"bad directive", "# check=bogus=1\nFROM scratch\n", nil, "bad # check= directive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			df, err := Parse("Dockerfile", []byte(tc.src))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "Dockerfile") || strings.Contains(err.Error(), "\n") {
					t.Fatalf("got %v, want one line naming the file and containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var rules []string
			for _, w := range df.Warnings {
				rules = append(rules, w.Rule)
				if w.Line == 0 || !strings.HasPrefix(w.String(), "Dockerfile:") {
					t.Errorf("warning without a location: %s", w)
				}
			}
			if strings.Join(rules, ",") != strings.Join(tc.rules, ",") {
				t.Fatalf("warnings %v, want rules %v", df.Warnings, tc.rules)
			}
		})
	}
	// The same comment inside an image's ONBUILD trigger.
	if _, err := ParseTrigger("# a comment\n# check=error=true\nCOPY a /a"); err != nil {
		t.Fatal(err)
	}
}
