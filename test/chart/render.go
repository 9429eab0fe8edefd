// Package chart renders the Helm chart for tests: test/chart checks what it
// renders as data, and test/e2e applies it to a cluster.
package chart

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// Namespace is the release namespace of the renders.
const Namespace = "kong-mesh-system"

// Manifests are the objects a chart renders.
type Manifests []*unstructured.Unstructured

// Dir is the chart's folder.
func Dir() string { return localcluster.ChartDir() }

// Render runs helm template for release meshcert in Namespace, with extra
// arguments.
func Render(args ...string) (Manifests, error) { return RenderRelease("meshcert", args...) }

// RenderRelease runs helm template for a release of that name in Namespace.
func RenderRelease(release string, args ...string) (Manifests, error) {
	return localcluster.RenderChart(release, Namespace, args...)
}
