# meshcert's build. `make test` is what CI runs (.ci/run); `make run` starts
# the whole system locally. The test cluster's binaries are built from source
# with the Go toolchain on first use (hack/cluster-bins.sh), so no release
# binary is downloaded, and cached in ~/.cache/meshcert.

SHELL := /usr/bin/env bash
GO ?= go
export GOTOOLCHAIN := local

# How long each fuzz target runs: a smoke run of a fixed number of inputs in
# `make test`, longer by hand, e.g. `make fuzz FUZZTIME=10m`. The smoke run
# counts inputs rather than seconds: Go 1.26's fuzz coordinator can fail a
# target with a bare "context deadline exceeded" when a -fuzztime duration ends
# on a loaded machine (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME ?= 20000x
FUZZ_TARGETS := ./webhook:FuzzAdmissionReview ./webhook:FuzzDefaultAndValidate ./internal/kuma:FuzzParseMeshSpec ./internal/lookup:FuzzCAProblems ./internal/kuma:FuzzSpiffeID ./internal/kuma:FuzzTrimDataplaneSpec ./webhook:FuzzMeshIdentityAdmission ./internal/agent/attest:FuzzParseCgroup ./internal/agent/attest:FuzzParseStartTime ./internal/agent:FuzzSDSResourceNames ./internal/controller/approval:FuzzWorkloadURI

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# What the tests need, each built or found once and cached by version
# (hack/cluster-bins.sh, hack/kuma.sh).
TEST_ENV = KUBEBUILDER_ASSETS="$$(hack/cluster-bins.sh assets)" HELM="$$(hack/cluster-bins.sh helm)" \
  APPROVER_POLICY="$$(hack/cluster-bins.sh approver-policy)" MESHCERT_NODE_BINS="$$(hack/cluster-bins.sh node)" \
  KUMA_DIR="$$(hack/kuma.sh)"

# The real node's tests (test/node) need root, and skip without it; only root
# installs the Debian packages the tests need (hack/packages.sh). They run
# after the others, alone: they wait on restarts and pods that the end-to-end
# tests would otherwise slow down.
.PHONY: test
test: vet ## Everything: unit, chart, end-to-end against a real API server and, as root, a real node, and a fuzz smoke run.
	[ "$$(id -u)" != 0 ] || hack/packages.sh
	$(TEST_ENV) $(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v /test/node)
	$(TEST_ENV) $(GO) test -count=1 -timeout 15m ./test/node/...
	$(MAKE) --no-print-directory fuzz

.PHONY: test-long
test-long: ## The reliability tests at full size (5,000 dataplanes, 50 kills; the agent killed 10 times under 1,000 streams), and each fuzz target for 10 minutes.
	$(TEST_ENV) $(GO) test -count=1 -timeout 60m ./test/e2e -run 'TestCrashDuringIssuance|TestSignerOutage|TestLeaderFailover|TestWebhookSurvives|TestAgent' -long -v
	$(MAKE) --no-print-directory fuzz FUZZTIME=10m

.PHONY: vet
vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

.PHONY: unit
unit: ## Unit tests only: no cluster needed.
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /test/)

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME.
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

# FIPS=1 builds with Go's FIPS 140-3 module: the frozen Go Cryptographic Module
# v1.0.0, the version this toolchain names certified
# ($(go env GOROOT)/lib/fips140/certified.txt), which turns FIPS 140-3 mode on by
# default. See "FIPS" in docs/installing.md.
.PHONY: build
build: ## The meshcert binary, as the image builds it (FIPS=1: with Go's FIPS 140-3 module).
	CGO_ENABLED=0 GOFIPS140=$(if $(FIPS),v1.0.0,off) $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/meshcert ./cmd/meshcert

.PHONY: cluster-bins
cluster-bins: ## Build (or find cached) kube-apiserver, etcd, helm and a real node's binaries.
	hack/cluster-bins.sh assets
	hack/cluster-bins.sh helm
	hack/cluster-bins.sh node

.PHONY: bench
bench: ## Benchmarks against same-run baselines, into bench/results.md (about 40 minutes; QUICK=1: about 10).
	@$(GO) build -o bin/meshcert-bench ./cmd/meshcert-bench
	KUBEBUILDER_ASSETS="$$(hack/cluster-bins.sh assets)" HELM="$$(hack/cluster-bins.sh helm)" bin/meshcert-bench $(if $(QUICK),--quick)

.PHONY: run
run: ## The whole system on this machine: API server, cert-manager, meshcert. Ctrl-C stops it.
	@echo "compiling the local runner (the first time takes a few minutes: it links cert-manager's controllers)"
	@$(GO) build -o bin/meshcert-local ./cmd/meshcert-local
	@bin/meshcert-local
