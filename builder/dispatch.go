package builder

import (
	"context"
	"fmt"
	"strings"

	"github.com/lbuild/lbuild/parser"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// historyComment marks history entries lbuild wrote, as BuildKit writes "buildkit.dockerfile.v0".
const historyComment = "lbuild.dockerfile.v0"

// dispatch expands a command's words against the stage's state and runs it.
// One function per instruction, picked here.
func (b *build) dispatch(ctx context.Context, st *stageState, c instructions.Command) error {
	st.note = newStepNote(c)
	st.line = parser.Line(c)
	if st.fromLine != 0 {
		st.line = st.fromLine // a trigger's own line is of its base's Dockerfile
	}
	if _, isArg := c.(*instructions.ArgCommand); !isArg {
		if ex, ok := c.(instructions.SupportsSingleWordExpansion); ok {
			env := st.expandEnv()
			if err := ex.Expand(func(w string) (string, error) {
				res, err := b.lex.ProcessWordWithMatches(w, env)
				st.note.used(res.Matched)
				return res.Result, err
			}); err != nil {
				return err
			}
		}
	}
	// Heredoc bodies (COPY <<EOF) expand like a shell heredoc: quotes are
	// kept, as BuildKit does with SkipProcessQuotes.
	if ex, ok := c.(instructions.SupportsSingleWordExpansionRaw); ok {
		lex := shell.NewLex(b.df.Escape)
		lex.SkipProcessQuotes = true
		env := st.expandEnv()
		if err := ex.ExpandRaw(func(w string) (string, error) {
			res, err := lex.ProcessWordWithMatches(w, env)
			st.note.used(res.Matched)
			return res.Result, err
		}); err != nil {
			return err
		}
	}
	st.index++
	switch c := c.(type) {
	case *instructions.EnvCommand:
		return b.dispatchEnv(ctx, st, c)
	case *instructions.LabelCommand:
		return b.dispatchLabel(ctx, st, c)
	case *instructions.MaintainerCommand:
		return b.dispatchMaintainer(ctx, st, c)
	case *instructions.WorkdirCommand:
		return b.dispatchWorkdir(ctx, st, c)
	case *instructions.UserCommand:
		return b.dispatchUser(ctx, st, c)
	case *instructions.ExposeCommand:
		return b.dispatchExpose(ctx, st, c)
	case *instructions.VolumeCommand:
		return b.dispatchVolume(ctx, st, c)
	case *instructions.CmdCommand:
		return b.dispatchCmd(ctx, st, c)
	case *instructions.EntrypointCommand:
		return b.dispatchEntrypoint(ctx, st, c)
	case *instructions.ShellCommand:
		return b.dispatchShell(ctx, st, c)
	case *instructions.StopSignalCommand:
		return b.dispatchStopSignal(ctx, st, c)
	case *instructions.HealthCheckCommand:
		return b.dispatchHealthcheck(ctx, st, c)
	case *instructions.OnbuildCommand:
		return b.dispatchOnbuild(ctx, st, c)
	case *instructions.ArgCommand:
		return b.dispatchArg(ctx, st, c)
	case *instructions.CopyCommand:
		return b.dispatchCopy(ctx, st, copyFromCopy(c))
	case *instructions.AddCommand:
		return b.dispatchCopy(ctx, st, copyFromAdd(c))
	case *instructions.RunCommand:
		return b.dispatchRun(ctx, st, c)
	}
	return fmt.Errorf("instruction %s is not supported", strings.ToUpper(c.Name()))
}
