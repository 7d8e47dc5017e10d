// Package builder builds images from a Dockerfile: Build takes the parsed
// plan (parser), and for each step derives the cache key from the step's
// typed inputs (cache.Inputs: the key of the last filesystem step, the
// filesystem it stands on, the instruction as expanded and what it reads),
// reuses the cached record on a
// hit, and otherwise executes the step on a snapshot and commits what
// changed as a layer blob in the image store. As in BuildKit, metadata
// steps (LABEL, ENV, USER, EXPOSE…) do not chain: a step's key changes only
// with what it reads (RUN: its env, user, workdir, network, mounts; COPY
// --from=stage: the content it copies, fromsum.go), never with the config
// lines above it. builder/testdata/conformance holds what BuildKit builds,
// case by case (TestConformance).
//
// Files: dispatch.go picks one function per instruction (meta.go for the
// metadata instructions and ARG, copy.go for COPY and ADD, run.go for RUN);
// step.go is the one path every step takes (key, lookup, execute, record);
// layer.go runs a step on a snapshot and stores its diff; build.go walks
// the stages; explain.go records each run step's inputs as a manifest and,
// with Options.Explain, tells why a step missed the cache; epoch.go picks
// the build time; check.go builds a second time to check that a build is
// reproducible. RUN goes through builder/executor, a one-method seam over
// the OCI runtime driver.
//
// Reproducible by default: one build time (Options.SourceDateEpoch; else
// HEAD's commit time in a git work tree; else 1970-01-01) is the config's
// and every new history entry's created and the latest mtime in every layer
// the build writes, and cache keys hold no host path, host name, user or
// time, so the same Dockerfile and context give the same image on any
// machine.
//
// Contract: Build never leaves a half-written blob, record or image under
// its final name; a failed or cancelled build leaves the store as it was,
// apart from complete layers and records of the steps that finished (which
// a later build reuses). Build is safe to run concurrently with other builds
// and lbuild commands on the same root. The builder never imports the
// container package, nor the container package the builder.
package builder
