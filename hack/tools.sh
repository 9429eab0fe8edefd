#!/usr/bin/env bash
# Installs the tools the tests run from Debian's packages, if missing:
# promtool (package prometheus), which test/monitoring runs on the chart's
# alerts. Idempotent and quiet when everything is present; needs root to install.
set -euo pipefail

declare -A probe=(
  [prometheus]=promtool
)
missing=()
for pkg in "${!probe[@]}"; do
  command -v "${probe[$pkg]}" >/dev/null || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "tools: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
