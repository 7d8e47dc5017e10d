package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/lbuild/lbuild/builder"
	"github.com/lbuild/lbuild/cache"
)

// registerExplain adds build's --explain[=text|json].
func registerExplain(fl *pflag.FlagSet, v *string) {
	fl.StringVar(v, "explain", "", "tell why each step missed the cache, under the step in the progress; =json also prints the steps as JSON on stdout")
	fl.Lookup("explain").NoOptDefVal = "text"
}

// explainMode checks --explain's value.
func explainMode(v string) (bool, error) {
	switch v {
	case "":
		return false, nil
	case "text", "json":
		return true, nil
	}
	return false, fmt.Errorf("--explain=%s: use --explain or --explain=json", v)
}

// explainedStep is one element of --explain=json's array.
type explainedStep struct {
	Step        int                `json:"step"`
	Stage       string             `json:"stage"`
	Instruction string             `json:"instruction"`
	Cached      bool               `json:"cached"`
	Reason      string             `json:"reason,omitempty"`
	Detail      string             `json:"detail,omitempty"`
	Files       []cache.FileChange `json:"files,omitempty"`
	Args        []builder.Change   `json:"args,omitempty"`
	Env         []builder.Change   `json:"env,omitempty"`
	ParentStep  int                `json:"parent_step,omitempty"`
}

// printExplain prints the steps as a JSON array to w for --explain=json.
func printExplain(w io.Writer, mode string, steps []builder.StepResult) error {
	if mode != "json" {
		return nil
	}
	out := make([]explainedStep, 0, len(steps))
	for _, s := range steps {
		e := explainedStep{Step: s.ID, Stage: s.Stage, Instruction: s.Text, Cached: s.Cached}
		if x := s.Explain; x != nil {
			e.Reason, e.Detail, e.Files, e.Args, e.Env, e.ParentStep = x.Reason, x.Detail, x.Files, x.Args, x.Env, x.ParentStep
		}
		out = append(out, e)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("print explanation: %w", err)
	}
	return nil
}
