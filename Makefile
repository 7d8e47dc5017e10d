# make demo: install what is missing, build lbuild and run the layer-sharing demo.
# make test: install what is missing and run every test.
GO ?= go
BIN := bin/lbuild

.PHONY: deps build demo test bench
deps:
	./hack/deps.sh

build:
	$(GO) build -o $(BIN) ./cmd/lbuild

demo: deps build
	LBUILD=$(CURDIR)/$(BIN) ./examples/demo.sh

test: deps
	$(GO) test -timeout 14m ./...

bench: deps build
	./bench/run.sh
