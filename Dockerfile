# meshcert's image: a static binary on distroless, running as non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/meshcert ./cmd/meshcert

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/meshcert /meshcert
USER 65532:65532
ENTRYPOINT ["/meshcert"]
