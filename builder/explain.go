package builder

// Why a step missed the cache (lbuild build --explain).
//
// Every record a build writes references a manifest of its key's inputs
// (cache.Manifest): the instruction as written, the ARGs it used, and for
// COPY/ADD the list of context files it copied. When a step misses, its
// nearest cached neighbour is found, and the two manifests are compared
// field by field in a fixed precedence; the first difference is the reason:
//
//  1. the record noted for the same parent and the same instruction text
//     (cache.Manifests.Next): the same step built before with other inputs;
//  2. else the step at the same position, of the same kind, in the stage's
//     previous build of this Dockerfile and target (the "last build" note);
//  3. else the step is new.
//
// A build without Explain only writes manifests for the steps it runs and
// one small note per build, rewritten only when it changed.

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/lbuild/lbuild/builder/progress"
	"github.com/lbuild/lbuild/cache"
)

// The reasons a step can miss the cache, in order of precedence.
const (
	ReasonNew         = "new"         // never built (no neighbour)
	ReasonNoCache     = "no-cache"    // --no-cache
	ReasonBase        = "base"        // the FROM image resolves to another image
	ReasonInstruction = "instruction" // the step's text differs
	ReasonArg         = "arg"         // the value of an ARG the step uses differs
	ReasonEnv         = "env"         // an environment variable the step sees differs
	ReasonFlags       = "flags"       // --network or RUN --mount options differ
	ReasonFiles       = "files"       // the context files the step copies differ
	ReasonConfig      = "config"      // the USER or WORKDIR the step runs with differs
	ReasonParent      = "parent"      // the step it stands on missed or changed
)

// Explanation tells why a step missed the cache.
type Explanation struct {
	Reason string `json:"reason"`
	// Detail: for instruction, the text it had; for base, the old and new
	// image; for flags, which flag; otherwise mostly empty.
	Detail string `json:"detail,omitempty"`
	// Files lists the changed context paths (files), unchanged ones left out.
	Files []cache.FileChange `json:"files,omitempty"`
	// Args (arg) and Env (env) list the variables whose value changed.
	Args []Change `json:"args,omitempty"`
	Env  []Change `json:"env,omitempty"`
	// ParentStep is the number of the step this one stands on (parent).
	ParentStep int `json:"parent_step,omitempty"`
}

// Change is a variable whose value changed. A secret-looking one
// (cache.SecretName) has Secret set and no values.
type Change struct {
	Name   string `json:"name"`
	Old    string `json:"old"`
	New    string `json:"new"`
	Secret bool   `json:"secret,omitempty"`
}

// maxShown is how many files or variables a one-line explanation names.
const maxShown = 3

// String is the explanation on one line: "files: a modified, b added (+3 more)".
func (e *Explanation) String() string {
	var parts []string
	switch e.Reason {
	case ReasonFiles:
		for _, f := range e.Files {
			parts = append(parts, f.Path+" "+f.Change)
		}
	case ReasonArg, ReasonEnv:
		l := e.Args
		if e.Reason == ReasonEnv {
			l = e.Env
		}
		for _, c := range l {
			switch {
			case c.Secret:
				parts = append(parts, c.Name+" changed (value not shown)")
			default:
				parts = append(parts, fmt.Sprintf("%s %s → %s", c.Name, showValue(c.Old), showValue(c.New)))
			}
		}
	case ReasonParent:
		if e.ParentStep > 0 {
			parts = append(parts, fmt.Sprintf("#%d changed", e.ParentStep))
		}
	}
	more := 0
	if len(parts) > maxShown {
		more = len(parts) - maxShown
		parts = parts[:maxShown]
	}
	s := e.Reason
	if e.Detail != "" {
		parts = append(parts, e.Detail)
	}
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, ", ")
	}
	if more > 0 {
		s += fmt.Sprintf(" (+%d more)", more)
	}
	return s
}

func showValue(v string) string {
	if v == "" {
		return `""`
	}
	if strings.ContainsAny(v, " \t\n\"") {
		return fmt.Sprintf("%q", v)
	}
	return v
}

// stepNote is what dispatch learns about the step being dispatched that its
// cache.Inputs do not say: its text as written, the variables its words
// expanded, and for COPY/ADD the checksummed selection.
type stepNote struct {
	text  string              // as written in the Dockerfile
	kind  string              // keyword, lower case
	words map[string]struct{} // variables the expansion of its words matched
	files *cache.FileSet      // COPY/ADD from the context
	rows  []cache.FileRow     // files listed (on a miss, once)
	// fromKey is the last step of the stage a COPY --from copies from.
	fromKey cache.Key
	// writes bounds what the step adds to the filesystem, in bytes of
	// memory (COPY from the context: its sources, a page a file at least);
	// 0: unknown. See memoryLimit.
	writes int64
}

// explainState is a build's part in explaining: the manifest store, which
// step of this build made each key, and the stages' steps for the next
// build's note.
type explainState struct {
	man       *cache.Manifests // nil: manifests are not kept (could not open)
	stepOf    map[cache.Key]int
	fromImage map[cache.Key]string // key of a FROM <image> -> the image ID
	last      *lastBuild           // the previous build's note, loaded on the first miss
	lastDone  bool
	cur       lastBuild
	// nbrOf maps the key of a step that missed to its neighbour's key, so
	// that the step after it can be compared with the same step on the
	// neighbour (the only way to find it in a cache imported on a fresh
	// machine, where no note of a previous build exists).
	nbrOf map[cache.Key]cache.Key
}

// lastBuild is the note a build leaves for the next one of the same
// Dockerfile and target: each stage's steps by position.
type lastBuild struct {
	Stages []lastStage `json:"stages"`
}

type lastStage struct {
	Index int        `json:"index"`
	Name  string     `json:"name,omitempty"`
	Steps []lastStep `json:"steps"`
}

type lastStep struct {
	Pos  int       `json:"pos"`
	Kind string    `json:"kind"`
	Key  cache.Key `json:"key"`
}

func (b *build) openExplain() {
	b.xp.stepOf = map[cache.Key]int{}
	b.xp.fromImage = map[cache.Key]string{}
	m, err := cache.OpenManifests(b.root.ExplainDir())
	if err != nil {
		logrus.Warnf("cache manifests (for --explain): %v", err)
		return
	}
	b.xp.man = m
}

// lastName names this build's note: the Dockerfile's path and the target.
func (b *build) lastName() string {
	p, err := filepath.Abs(b.opts.Dockerfile)
	if err != nil {
		p = b.opts.Dockerfile
	}
	return p + "\x00" + b.opts.Target
}

// fromImageOf and stepOfKey read what noteFrom and noteStep wrote (stages
// build in parallel: under b.mu).
func (b *build) fromImageOf(k cache.Key) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.xp.fromImage[k]
}

func (b *build) stepOfKey(k cache.Key) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.xp.stepOf[k]
}

// noteFrom remembers a stage's FROM step.
func (b *build) noteFrom(key cache.Key, id int, imageID string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.xp.stepOf[key]; !ok {
		b.xp.stepOf[key] = id
	}
	if imageID != "" {
		b.xp.fromImage[key] = imageID
	}
}

// noteStep remembers a step of this build, for its successors' explanations
// and the next build's note.
func (b *build) noteStep(st *stageState, id int, key cache.Key) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.xp.stepOf[key]; !ok {
		b.xp.stepOf[key] = id
	}
	ls := b.curStage(st)
	ls.Steps = append(ls.Steps, lastStep{Pos: st.index, Kind: st.note.kind, Key: key})
}

func (b *build) curStage(st *stageState) *lastStage {
	for i := range b.xp.cur.Stages {
		if s := &b.xp.cur.Stages[i]; s.Index == st.st.Index {
			return s
		}
	}
	b.xp.cur.Stages = append(b.xp.cur.Stages, lastStage{Index: st.st.Index, Name: st.st.Name})
	return &b.xp.cur.Stages[len(b.xp.cur.Stages)-1]
}

// saveLast leaves this build's note for the next one.
func (b *build) saveLast() {
	if b.xp.man == nil {
		return
	}
	j, err := json.Marshal(&b.xp.cur)
	if err == nil {
		err = b.xp.man.PutLast(b.lastName(), j)
	}
	if err != nil {
		logrus.Warnf("note build for --explain: %v", err)
	}
}

// prevStep returns the key the stage's previous build had at the step's
// position, if that step was of the same kind.
func (b *build) prevStep(st *stageState) (cache.Key, bool) {
	if !b.xp.lastDone {
		b.xp.lastDone = true
		if j, err := b.xp.man.Last(b.lastName()); err == nil {
			var l lastBuild
			if json.Unmarshal(j, &l) == nil {
				b.xp.last = &l
			}
		}
	}
	if b.xp.last == nil {
		return "", false
	}
	for _, s := range b.xp.last.Stages {
		if (st.st.Name != "" && s.Name == st.st.Name) || (st.st.Name == "" && s.Name == "" && s.Index == st.st.Index) {
			for _, p := range s.Steps {
				if p.Pos == st.index && p.Kind == st.note.kind {
					return p.Key, true
				}
			}
		}
	}
	return "", false
}

// stepManifest is the manifest of the step being built (its file list not
// yet stored).
func (b *build) stepManifest(st *stageState, in cache.Inputs) *cache.Manifest {
	m := &cache.Manifest{Inputs: in, Text: st.note.text, Kind: st.note.kind, FromImage: b.fromImageOf(in.Parent), FromStage: st.note.fromKey}
	if len(in.Env) > 0 {
		m.Inputs.Env = make([]string, len(in.Env))
		for i, e := range in.Env {
			k, v, _ := strings.Cut(e, "=")
			m.Inputs.Env[i] = k + "=" + cache.Redact(k, v)
		}
	}
	shadowed := map[string]bool{}
	for _, e := range st.cfg.Config.Env {
		k, v, _ := strings.Cut(e, "=")
		shadowed[k] = true
		if _, used := st.note.words[k]; used && st.note.kind != "run" {
			m.Env = append(m.Env, cache.NameValue{Name: k, Value: cache.Redact(k, v)})
		}
	}
	// Secret-looking values the expansion may have put into the text.
	var secrets []string
	for _, a := range st.args {
		if cache.SecretName(a.k) && len(a.v) >= 4 {
			secrets = append(secrets, a.v, cache.Redact(a.k, a.v))
		}
	}
	for _, e := range st.cfg.Config.Env {
		if k, v, _ := strings.Cut(e, "="); cache.SecretName(k) && len(v) >= 4 {
			secrets = append(secrets, v, cache.Redact(k, v))
		}
	}
	if len(secrets) > 0 {
		r := strings.NewReplacer(secrets...)
		in := &m.Inputs
		in.Instruction, in.Data, in.Script = r.Replace(in.Instruction), r.Replace(in.Data), r.Replace(in.Script)
		in.Heredocs = slices.Clone(in.Heredocs)
		for i, h := range in.Heredocs {
			in.Heredocs[i] = r.Replace(h)
		}
	}
	for _, a := range st.args {
		_, used := st.note.words[a.k]
		if st.note.kind == "run" {
			used = !shadowed[a.k] || st.argOver[a.k] // a RUN sees every ARG in scope that ENV does not set
		}
		if used {
			m.Args = append(m.Args, cache.NameValue{Name: a.k, Value: cache.Redact(a.k, a.v)})
		}
	}
	return m
}

// fileRows lists the step's copied context files (once).
func (b *build) fileRows(st *stageState) ([]cache.FileRow, error) {
	if st.note.rows == nil && st.note.files != nil {
		rows, err := st.note.files.Rows(b.ctxDir)
		if err != nil {
			return nil, err
		}
		st.note.rows = rows
	}
	return st.note.rows, nil
}

// recordManifest stores the manifest of a step that ran and returns its
// digest for the record ("" if manifests are not kept or storing failed:
// the build goes on, only its explanations are lost).
func (b *build) recordManifest(st *stageState, in cache.Inputs) string {
	if b.xp.man == nil {
		return ""
	}
	m := b.stepManifest(st, in)
	d, err := b.putManifest(st, m)
	if err != nil {
		logrus.Warnf("cache manifest (for --explain): %v", err)
		return ""
	}
	return d
}

func (b *build) putManifest(st *stageState, m *cache.Manifest) (string, error) {
	if st.note.files != nil {
		rows, err := b.fileRows(st)
		if err != nil {
			return "", err
		}
		if m.Files, err = b.xp.man.PutFiles(rows); err != nil {
			return "", err
		}
	}
	return b.xp.man.Put(m)
}

// indexManifest notes a recorded step in the (parent, text) index.
func (b *build) indexManifest(st *stageState, in cache.Inputs, key cache.Key) {
	if b.xp.man == nil {
		return
	}
	if err := b.xp.man.SetNext(in.Parent, st.note.text, key); err != nil {
		logrus.Warnf("cache manifest index (for --explain): %v", err)
	}
}

// explainMiss tells why the step with key and inputs in missed, and shows it
// under step id in the progress.
func (b *build) explainMiss(st *stageState, id int, in cache.Inputs, key cache.Key) *Explanation {
	x := b.explain(st, in, key)
	if p, ok := b.prog.(progress.Explainer); ok {
		p.Explain(id, x.String())
	}
	return x
}

func (b *build) explain(st *stageState, in cache.Inputs, key cache.Key) *Explanation {
	if b.xp.man == nil {
		return &Explanation{Reason: ReasonNew, Detail: "no manifests kept"}
	}
	old, oldKey, bare := b.neighbour(st, in, key)
	if old != nil {
		if b.xp.nbrOf == nil {
			b.xp.nbrOf = map[cache.Key]cache.Key{}
		}
		b.xp.nbrOf[key] = oldKey
	}
	switch {
	case old == nil && bare:
		return &Explanation{Reason: ReasonNew, Detail: "its neighbour was recorded without a manifest"}
	case old == nil:
		return &Explanation{Reason: ReasonNew}
	case b.opts.NoCache:
		return &Explanation{Reason: ReasonNoCache}
	case oldKey == key:
		return &Explanation{Reason: ReasonNew, Detail: "its layer is no longer in the store"}
	}
	cur := b.stepManifest(st, in)
	return b.compare(st, cur, old)
}

// neighbour finds the manifest of the step's nearest cached neighbour and
// its key: the record under the same key (when it could not be used), the
// step noted for the same parent and text, or the step at the same
// position in the stage's previous build. bare reports a neighbour whose
// record has no manifest (recorded by an older lbuild).
func (b *build) neighbour(st *stageState, in cache.Inputs, key cache.Key) (m *cache.Manifest, k cache.Key, bare bool) {
	var cands []cache.Key
	cands = append(cands, key)
	if k, err := b.xp.man.Next(in.Parent, st.note.text); err == nil {
		cands = append(cands, k)
	}
	if p, ok := b.xp.nbrOf[in.Parent]; ok {
		if k, err := b.xp.man.Next(p, st.note.text); err == nil {
			cands = append(cands, k) // the same step on the parent's neighbour
		}
	}
	if k, ok := b.prevStep(st); ok {
		cands = append(cands, k)
	}
	for _, k := range cands {
		rec, err := b.root.Records.Get(k)
		if err != nil && b.opts.CacheFrom != nil {
			// A neighbour from an imported cache (its manifest came with it).
			if r := b.opts.CacheFrom.Record(k); r != nil {
				rec, err = r, nil
			}
		}
		if err != nil {
			continue
		}
		if rec.Manifest == "" {
			bare = true
			continue
		}
		m, err := b.xp.man.Get(rec.Manifest)
		if err != nil {
			logrus.Debugf("manifest of %s: %v", k, err)
			bare = true
			continue
		}
		return m, k, false
	}
	return nil, "", bare
}

// compare names the first difference between the step's manifest and its
// neighbour's, in the order of precedence.
func (b *build) compare(st *stageState, cur, old *cache.Manifest) *Explanation {
	ci, oi := cur.Inputs, old.Inputs
	if cur.FromImage != "" && old.FromImage != "" && cur.FromImage != old.FromImage {
		return &Explanation{Reason: ReasonBase, Detail: fmt.Sprintf("%s (was %s)", short(cur.FromImage), short(old.FromImage))}
	}
	if cur.Text != old.Text {
		return &Explanation{Reason: ReasonInstruction, Detail: fmt.Sprintf("was %q", old.Text)}
	}
	if ch := diffVars(nameValues(old.Args), nameValues(cur.Args), nil); len(ch) > 0 {
		return &Explanation{Reason: ReasonArg, Args: ch}
	}
	args := map[string]bool{}
	for _, a := range append(slices.Clone(cur.Args), old.Args...) {
		args[a.Name] = true
	}
	oe, ce := envValues(oi.Env), envValues(ci.Env)
	maps.Copy(oe, nameValues(old.Env))
	maps.Copy(ce, nameValues(cur.Env))
	if ch := diffVars(oe, ce, args); len(ch) > 0 {
		return &Explanation{Reason: ReasonEnv, Env: ch}
	}
	if ci.Instruction != oi.Instruction || ci.Data != oi.Data {
		return &Explanation{Reason: ReasonEnv, Detail: "the instruction expands differently"}
	}
	if ci.Script != oi.Script || !slices.Equal(ci.Heredocs, oi.Heredocs) {
		return &Explanation{Reason: ReasonInstruction, Detail: "its heredoc differs"}
	}
	if ci.Network != oi.Network {
		return &Explanation{Reason: ReasonFlags, Detail: fmt.Sprintf("network %s (was %s)", ci.Network, oi.Network)}
	}
	if !slices.Equal(ci.Mounts, oi.Mounts) {
		return &Explanation{Reason: ReasonFlags, Detail: "mount options differ"}
	}
	if ci.From != oi.From {
		// COPY --from: what it copies from the stage (or the image) changed.
		return &Explanation{Reason: ReasonParent, ParentStep: b.stepOfKey(cur.FromStage), Detail: "its --from source changed"}
	}
	if ci.Sources != oi.Sources {
		x := &Explanation{Reason: ReasonFiles}
		rows, err := b.fileRows(st)
		if err != nil || old.Files == "" {
			x.Detail = "the copied files differ"
			return x
		}
		oldRows, err := b.xp.man.Files(old.Files)
		if err != nil {
			x.Detail = "the copied files differ (previous list unreadable)"
			return x
		}
		if x.Files = cache.DiffFiles(oldRows, rows); len(x.Files) == 0 {
			x.Detail = "the same files, copied in another arrangement"
		}
		return x
	}
	// USER and WORKDIR are no steps of the key chain (metadata does not
	// chain): a step standing on the same filesystem that runs as another
	// user or in another directory says so.
	if ci.Parent == oi.Parent && ci.User != oi.User {
		return &Explanation{Reason: ReasonConfig, Detail: fmt.Sprintf("user %s (was %s)", showValue(ci.User), showValue(oi.User))}
	}
	if ci.Parent == oi.Parent && ci.Workdir != oi.Workdir {
		return &Explanation{Reason: ReasonConfig, Detail: fmt.Sprintf("workdir %s (was %s)", showValue(ci.Workdir), showValue(oi.Workdir))}
	}
	if ci.Parent != oi.Parent || ci.Workdir != oi.Workdir || ci.User != oi.User {
		return &Explanation{Reason: ReasonParent, ParentStep: b.stepOfKey(ci.Parent)}
	}
	return &Explanation{Reason: ReasonNew}
}

func short(id string) string {
	if len(id) > 19 {
		return id[:19]
	}
	return id
}

func nameValues(l []cache.NameValue) map[string]string {
	m := make(map[string]string, len(l))
	for _, nv := range l {
		m[nv.Name] = nv.Value
	}
	return m
}

func envValues(l []string) map[string]string {
	m := make(map[string]string, len(l))
	for _, e := range l {
		k, v, _ := strings.Cut(e, "=")
		m[k] = v
	}
	return m
}

// diffVars lists, by name, the variables whose value differs between old
// and new (a missing one counts as ""), skipping names in skip.
func diffVars(old, new map[string]string, skip map[string]bool) []Change {
	var names []string
	for k := range old {
		names = append(names, k)
	}
	for k := range new {
		if _, ok := old[k]; !ok {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	var out []Change
	for _, k := range names {
		o, n := old[k], new[k]
		if o == n || skip[k] {
			continue
		}
		if cache.SecretName(k) {
			out = append(out, Change{Name: k, Secret: true})
			continue
		}
		out = append(out, Change{Name: k, Old: o, New: n})
	}
	return out
}

func newStepNote(c interface{ Name() string }) stepNote {
	n := stepNote{kind: strings.ToLower(c.Name())}
	if s, ok := c.(fmt.Stringer); ok {
		n.text = s.String()
	}
	return n
}

// used adds the variables an expansion matched.
func (n *stepNote) used(words map[string]struct{}) {
	if len(words) == 0 {
		return
	}
	if n.words == nil {
		n.words = map[string]struct{}{}
	}
	for w := range words {
		n.words[w] = struct{}{}
	}
}
