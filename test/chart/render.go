// Package chart renders the Helm chart for tests: test/chart checks what it
// renders as data, and test/e2e applies it to a cluster.
package chart

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Namespace is the release namespace of the renders.
const Namespace = "kong-mesh-system"

// Manifests are the objects a chart renders.
type Manifests []*unstructured.Unstructured

// Dir is the chart's folder.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "charts", "meshcert")
}

// Render runs helm template for release meshcert in Namespace, with extra
// arguments.
func Render(args ...string) (Manifests, error) { return RenderRelease("meshcert", args...) }

// RenderRelease runs helm template for a release of that name in Namespace.
func RenderRelease(release string, args ...string) (Manifests, error) {
	helm := os.Getenv("HELM")
	if helm == "" {
		return nil, errors.New("HELM is not set: run `make test`, or export HELM=$(hack/cluster-bins.sh helm)")
	}
	cmd := exec.Command(helm, append([]string{"template", release, Dir(), "--namespace", Namespace}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("helm template %v: %w\n%s", args, err, stderr.String())
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(&stdout, 4096)
	var out Manifests
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}
