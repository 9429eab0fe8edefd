#!/usr/bin/env bash
# Prints a folder holding Kuma's kuma-cp, kuma-dp and kumactl, and its Helm
# chart (chart/, with chart/crds), for the tests that run a real Kuma. They
# come from, in order: $KUMA_DIR (Kuma's unpacked release, kuma-<version>/, or
# a folder of the xz files below); ../shared/kuma beside the repository (the
# xz files of Kuma's binaries built from source, with its chart); an earlier
# unpack in the cache; or Kuma's release download. Binaries are unpacked into
# $CACHE/kuma-<version>, keyed by version, outside the checkout; nothing of
# Kuma is ever copied into the repository.
set -euo pipefail

KUMA_VERSION="${KUMA_VERSION:-2.14.3}"
CACHE="${MESHCERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshcert}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$CACHE/kuma-$KUMA_VERSION"

log() { echo "kuma: $*" >&2; }

complete() { [[ -x "$1/kuma-cp" && -x "$1/kuma-dp" && -x "$1/kumactl" && -d "$1/chart/crds" ]]; }

# from DIR: a release (bin/ and a chart) or the xz files and chart/ of a build.
from() {
  local dir=$1
  if complete "$dir"; then echo "$dir"; return 0; fi
  if [[ -x "$dir/bin/kuma-cp" ]]; then
    mkdir -p "$OUT"
    cp "$dir"/bin/kuma-cp "$dir"/bin/kuma-dp "$dir"/bin/kumactl "$OUT/"
  elif [[ -f "$dir/kuma-cp-$KUMA_VERSION-linux-amd64.xz" ]]; then
    mkdir -p "$OUT"
    for name in kuma-cp kuma-dp kumactl; do
      if [[ ! -x "$OUT/$name" ]]; then
        log "unpacking $name $KUMA_VERSION into $OUT"
        xz -dc "$dir/$name-$KUMA_VERSION-linux-amd64.xz" >"$OUT/.$name" && chmod +x "$OUT/.$name" && mv "$OUT/.$name" "$OUT/$name"
      fi
    done
  else
    return 1
  fi
  if [[ -d "$dir/chart/crds" && ! -d "$OUT/chart/crds" ]]; then
    rm -rf "$OUT/chart" && cp -r "$dir/chart" "$OUT/chart"
  fi
  complete "$OUT" && echo "$OUT"
}

if [[ -n "${KUMA_DIR:-}" ]]; then
  from "$KUMA_DIR" || { log "KUMA_DIR=$KUMA_DIR holds no kuma-cp, kuma-dp, kumactl and chart $KUMA_VERSION"; exit 1; }
  exit 0
fi
if [[ -d "$ROOT/../shared/kuma" ]] && from "$ROOT/../shared/kuma"; then exit 0; fi
if complete "$OUT"; then echo "$OUT"; exit 0; fi

# Kuma's release: its tarball (the URL Kuma's installer.sh uses; unchecked here, where
# nothing can be downloaded) holds the binaries; its chart is in its Helm repository.
log "downloading Kuma $KUMA_VERSION (its release tarball and chart)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL "https://packages.konghq.com/public/kuma-binaries-release/raw/names/kuma-linux-amd64/versions/$KUMA_VERSION/kuma-$KUMA_VERSION-linux-amd64.tar.gz" | tar -xz -C "$work"
helm pull kuma --repo https://kumahq.github.io/charts --version "$KUMA_VERSION" --untar --untardir "$work/charts"
mkdir -p "$OUT"
cp "$work/kuma-$KUMA_VERSION"/bin/kuma-cp "$work/kuma-$KUMA_VERSION"/bin/kuma-dp "$work/kuma-$KUMA_VERSION"/bin/kumactl "$OUT/"
cp -r "$work/charts/kuma" "$OUT/chart"
complete "$OUT" && echo "$OUT"
