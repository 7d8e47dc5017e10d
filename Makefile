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

# make demo-nginx: the nginx story with a real Debian and nginx (needs the
# Debian mirror; the base is made once with debootstrap and cached).
.PHONY: demo-nginx
demo-nginx: deps build
	LBUILD=$(CURDIR)/$(BIN) ./examples/nginx/demo.sh
