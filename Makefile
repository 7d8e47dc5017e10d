# make demo: install what is missing, build lbuild and run the layer-sharing demo.
# make test: install what is missing, run every test, then fuzz a little.
# make fuzz: run each fuzz target for FUZZTIME, a count of inputs (make fuzz FUZZTIME=5m to hunt;
# a count, not a duration, in make test: a duration can end a clean run with
# "context deadline exceeded").
GO ?= go
BIN := bin/lbuild

# Fuzz targets as package:Target. FUZZ_TARGETS run in make test (about 4 s
# each with the build); FUZZ_MORE only in make fuzz-more. Inputs a run finds
# new go to the Go build cache; a crasher is written to
# PKG/testdata/fuzz/TARGET/: fix it and commit the file.
FUZZTIME ?= 1500x
FUZZ_TARGETS ?= parser:FuzzParse snapshot:FuzzApplyTar internal/erofs:FuzzBuild transfer:FuzzLoad cache:FuzzNewKey cache:FuzzChecksum
FUZZ_MORE ?= parser:FuzzParseTrigger cache:FuzzDecodeIndex cache:FuzzRecordGet

.PHONY: deps build demo test bench fuzz fuzz-more
deps:
	./hack/deps.sh

# Static (no cgo: only net and os/user would use it, both have Go
# versions): no dynamic loader and glibc start-up in every lbuild process,
# ~2.5 ms of a "run --rm".
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/lbuild

demo: deps build
	LBUILD=$(CURDIR)/$(BIN) ./examples/demo.sh

test: deps
	$(GO) test -timeout 14m ./...
	$(MAKE) fuzz

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} in ./$${t%%:*} for $(FUZZTIME)"; \
		grep -q "^func $${t#*:}(" $${t%%:*}/*_test.go || { echo "no fuzz target $$t" >&2; exit 1; }; \
		$(GO) test -run='^$$' -fuzz="^$${t#*:}\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=1s ./$${t%%:*}; \
	done

fuzz-more:
	$(MAKE) fuzz FUZZ_TARGETS="$(FUZZ_MORE)"

bench: deps build
	./bench/run.sh

# make demo-nginx: the nginx story with a real Debian and nginx (needs the
# Debian mirror; the base is made once with debootstrap and cached).
.PHONY: demo-nginx
demo-nginx: deps build
	LBUILD=$(CURDIR)/$(BIN) ./examples/nginx/demo.sh
