#!/usr/bin/env bash
# Installs what a real test node needs from Debian's packages, if missing:
# containerd (and its ctr), runc, the CNI plugins (in /usr/lib/cni), iptables, and nft,
# with which a test deletes the tables iptables-nft leaves.
# Idempotent and quiet when everything is present; needs root to install.
set -euo pipefail

declare -A probe=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [nftables]=/usr/sbin/nft
)
missing=()
for pkg in "${!probe[@]}"; do
  [[ -x "${probe[$pkg]}" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "node-packages: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
