#!/usr/bin/env bash
# Installs what a real test node needs from Debian's packages, if missing:
# containerd (and its ctr), runc, and the CNI plugins (in /usr/lib/cni).
# Idempotent and quiet when everything is present; needs root to install.
set -euo pipefail

declare -A probe=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
)
missing=()
for pkg in containerd runc containernetworking-plugins; do
  [[ -x "${probe[$pkg]}" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "node-packages: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
