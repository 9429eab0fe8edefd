#!/usr/bin/env bash
# Installs what the tests need from Debian's packages, if missing: for a real
# test node, containerd (and its ctr), runc, the CNI plugins (in /usr/lib/cni),
# iptables, and nft, with which a test deletes the tables iptables-nft leaves;
# and promtool (package prometheus), which test/monitoring runs on the chart's
# alerts.
# Idempotent and quiet when everything is present; needs root to install.
set -euo pipefail

declare -A probe=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [nftables]=/usr/sbin/nft
  [prometheus]=/usr/bin/promtool
)
missing=()
for pkg in "${!probe[@]}"; do
  [[ -x "${probe[$pkg]}" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "packages: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
