package localcluster

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

// HelmEnv names the helm binary, as hack/cluster-bins.sh helm prints it. The
// Makefile sets it.
const HelmEnv = "HELM"

// ChartDir is the folder of meshcert's Helm chart.
func ChartDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "charts", "meshcert")
}

// RenderChart runs helm template for a release of meshcert's chart in
// namespace, with extra arguments, and returns the objects it renders.
func RenderChart(release, namespace string, args ...string) ([]*unstructured.Unstructured, error) {
	helm := os.Getenv(HelmEnv)
	if helm == "" {
		return nil, fmt.Errorf("%s is not set: run `make test`, or export %s=$(hack/cluster-bins.sh helm)", HelmEnv, HelmEnv)
	}
	cmd := exec.Command(helm, append([]string{"template", release, ChartDir(), "--namespace", namespace}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("helm template %v: %w\n%s", args, err, stderr.String())
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(&stdout, 4096)
	var out []*unstructured.Unstructured
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
