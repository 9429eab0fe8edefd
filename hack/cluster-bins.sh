#!/usr/bin/env bash
# Builds the test cluster's binaries (kube-apiserver, etcd, approver-policy, and
# a real node's kubelet, controllers, kube-proxy and SPIFFE CSI driver) and
# helm from source with the Go toolchain, each in a throwaway Go module, so that
# no release binary needs to be downloaded: the Go module proxy is all it needs.
# Each binary is cached outside the checkout, keyed by version, so only the
# first run pays for it.
#
# Usage: hack/cluster-bins.sh assets|node|helm|approver-policy
#   assets           prints a KUBEBUILDER_ASSETS folder holding kube-apiserver, etcd and kubectl
#   node             prints a folder holding kubelet, kube-controller-manager, kube-scheduler,
#                    kube-proxy and spiffe-csi-driver, for test/node
#   helm             prints the path of the helm binary
#   approver-policy  prints a folder holding approver-policy's controller binary and its CRD
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.0}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
APPROVER_POLICY_VERSION="${APPROVER_POLICY_VERSION:-v0.28.0}"
SPIFFE_CSI_VERSION="${SPIFFE_CSI_VERSION:-v0.2.6}"
CACHE="${MESHCERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshcert}"
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { echo "cluster-bins: $*" >&2; }

# build NAME KEY VERSION PACKAGE MODULE LDFLAGS [REPLACES...]: builds PACKAGE of
# MODULE@VERSION inside a throwaway wrapper module and installs it at
# $CACHE/NAME-KEY/NAME. KEY is the version, plus anything else the build depends on.
build() {
  local name=$1 key=$2 version=$3 pkg=$4 module=$5 ldflags=$6
  shift 6
  local dest="$CACHE/$name-$key/$name"
  if [[ -x "$dest" ]]; then
    echo "$dest"
    return
  fi
  log "building $name $version from source with the Go toolchain, once per version (kube-apiserver takes several minutes); the result is cached in $CACHE"
  local start=$SECONDS
  (
    work=$(mktemp -d "$CACHE/.build-$name.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    cat >go.mod <<MOD
module meshcert.local/build/$name

go 1.26

require $module $version
MOD
    for r in "$@"; do echo "replace $r" >>go.mod; done
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >tools.go
    go mod tidy >&2
    go build -trimpath -ldflags "-s -w ${ldflags//$'\n'/ }" -o "$work/$name" "$pkg" >&2
    mkdir -p "$(dirname "$dest")"
    mv "$work/$name" "$dest"
  )
  log "built $name $version in $((SECONDS - start))s"
  echo "$dest"
}

# kube NAME builds k8s.io/kubernetes/cmd/NAME. k8s.io/kubernetes maps its
# staging modules to ./staging/src, which the module zip lacks: point each one
# at its published k8s.io/M v0.Y.Z instead.
kube() {
  local name=$1
  if [[ -x "$CACHE/$name-$KUBE_VERSION/$name" ]]; then
    echo "$CACHE/$name-$KUBE_VERSION/$name"
    return
  fi
  local gomod staging_version replaces=()
  gomod=$(cd "$CACHE" 2>/dev/null || cd /tmp; go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  staging_version="v0.${KUBE_VERSION#v1.}"
  while read -r m; do
    replaces+=("$m => $m $staging_version")
  done < <(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod")
  local major minor
  major=${KUBE_VERSION#v}; major=${major%%.*}
  minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
  build "$name" "$KUBE_VERSION" "$KUBE_VERSION" "k8s.io/kubernetes/cmd/$name" k8s.io/kubernetes \
    "-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor" \
    "${replaces[@]}"
}

etcd() {
  build etcd "$ETCD_VERSION" "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 ""
}

# helm's release builds stamp the Kubernetes version of their client-go; without
# it helm template assumes v1.20 and refuses charts that need newer.
helm() {
  local gomod minor
  gomod=$(cd "$CACHE"; go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  minor=$(sed -n 's#^\s*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod")
  build helm "$HELM_VERSION-k8s1.$minor" "$HELM_VERSION" helm.sh/helm/v3/cmd/helm helm.sh/helm/v3 \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION
     -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor
     -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
}

# approver-policy keeps its controllers in internal packages, so the tests run
# its own main, next to the CRD of the same release.
approver_policy() {
  local bin dir moddir
  bin=$(build approver-policy "$APPROVER_POLICY_VERSION" "$APPROVER_POLICY_VERSION" \
    github.com/cert-manager/approver-policy/cmd github.com/cert-manager/approver-policy "")
  dir=$(dirname "$bin")
  if [[ ! -f "$dir/crds/certificaterequestpolicies.yaml" ]]; then
    moddir=$(cd "$CACHE"; go mod download -json "github.com/cert-manager/approver-policy@$APPROVER_POLICY_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
    mkdir -p "$dir/crds"
    cp "$moddir/deploy/crds/policy.cert-manager.io_certificaterequestpolicies.yaml" "$dir/crds/certificaterequestpolicies.yaml"
  fi
  echo "$dir"
}

assets() {
  if [[ -z "$KUBECTL" ]]; then
    log "kubectl is not on PATH; install it (the README lists it as a prerequisite)"
    exit 1
  fi
  local apiserver etcdbin dir="$CACHE/assets-kube-$KUBE_VERSION-etcd-$ETCD_VERSION"
  apiserver=$(kube kube-apiserver)
  etcdbin=$(etcd)
  mkdir -p "$dir"
  ln -sfn "$apiserver" "$dir/kube-apiserver"
  ln -sfn "$etcdbin" "$dir/etcd"
  ln -sfn "$KUBECTL" "$dir/kubectl"
  echo "$dir"
}

# A real node's binaries. The kubelet is pinned with the control plane: 1.37
# is the last that falls back to its own cgroup driver with containerd 1.6.
node() {
  local dir="$CACHE/node-kube-$KUBE_VERSION-spiffe-csi-$SPIFFE_CSI_VERSION" name bin
  mkdir -p "$dir"
  for name in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    bin=$(kube "$name")
    ln -sfn "$bin" "$dir/$name"
  done
  bin=$(build spiffe-csi-driver "$SPIFFE_CSI_VERSION" "$SPIFFE_CSI_VERSION" \
    github.com/spiffe/spiffe-csi/cmd/spiffe-csi-driver github.com/spiffe/spiffe-csi "")
  ln -sfn "$bin" "$dir/spiffe-csi-driver"
  echo "$dir"
}

# One build at a time per cache, so parallel make targets don't race.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

case "${1:-}" in
  assets) assets ;;
  node) node ;;
  helm) helm ;;
  approver-policy) approver_policy ;;
  *) echo "usage: $0 assets|node|helm|approver-policy" >&2; exit 2 ;;
esac
