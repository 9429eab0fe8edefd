# meshcert's image: a static binary on distroless, running as non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# FIPS=1 builds with Go's FIPS 140-3 module, as `make build FIPS=1`: see "FIPS"
# in docs/installing.md.
ARG FIPS=
RUN CGO_ENABLED=0 GOTOOLCHAIN=local GOFIPS140=${FIPS:+v1.0.0} go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/meshcert ./cmd/meshcert

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/meshcert /meshcert
USER 65532:65532
ENTRYPOINT ["/meshcert"]
