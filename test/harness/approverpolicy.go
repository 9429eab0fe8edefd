package harness

import (
	"fmt"
	"os"
	"path/filepath"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// ApproverPolicyEnv names the folder, from hack/cluster-bins.sh
// approver-policy, that holds approver-policy's binary and its CRD.
const ApproverPolicyEnv = "APPROVER_POLICY"

// StartApproverPolicy installs the CertificateRequestPolicy CRD and runs
// approver-policy's own controller binary against the cluster, its output
// in logPath. Its webhook, which validates policies, is served but not
// registered. Kill the process to stop it.
func StartApproverPolicy(c *localcluster.Cluster, namespace, logPath string) (*localcluster.Process, error) {
	dir := os.Getenv(ApproverPolicyEnv)
	if dir == "" {
		return nil, fmt.Errorf("%s is not set: run the tests through make test, or set it to the output of hack/cluster-bins.sh approver-policy", ApproverPolicyEnv)
	}
	if err := installCRDFile(c, filepath.Join(dir, "crds", "certificaterequestpolicies.yaml")); err != nil {
		return nil, err
	}
	ports := make([]int, 2)
	for i := range ports {
		p, err := localcluster.FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	ready := fmt.Sprintf("127.0.0.1:%d", ports[0])
	return localcluster.StartBinary(filepath.Join(dir, "approver-policy"), logPath, "http://"+ready+"/readyz",
		"--kubeconfig", c.Kubeconfig,
		"--leader-election-namespace", namespace,
		"--readiness-probe-bind-address", ready,
		"--metrics-bind-address", "0",
		"--webhook-host", "127.0.0.1",
		"--webhook-port", fmt.Sprint(ports[1]),
		"--webhook-ca-secret-namespace", namespace,
		"--log-level", "2",
	)
}

// installCRDFile installs the CRD in one YAML file and waits for it to serve.
func installCRDFile(c *localcluster.Cluster, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(b, crd); err != nil {
		return fmt.Errorf("reading the CRD in %s: %w", path, err)
	}
	_, err = envtest.InstallCRDs(c.Config, envtest.CRDInstallOptions{CRDs: []*apiextensionsv1.CustomResourceDefinition{crd}})
	return err
}
