package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/check"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/internal/testpki"
)

// checkRun is one run of the meshcert binary's check, as a golden file
// records it.
type checkRun struct {
	args     []string
	exitCode int
	stdout   string
	stderr   string
}

// runCheck runs `meshcert check` with args against the test cluster.
func runCheck(t *testing.T, args ...string) checkRun {
	t.Helper()
	bin, err := localcluster.MeshcertBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(append([]string{"check"}, args...), "--kubeconfig", testEnv.cluster.Kubeconfig)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	run := checkRun{args: args}
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		run.exitCode = exit.ExitCode()
	case err != nil:
		t.Fatalf("running meshcert check %v: %v", args, err)
	}
	run.stdout, run.stderr = stdout.String(), stderr.String()
	return run
}

func (r checkRun) String() string {
	return fmt.Sprintf("$ %s\n# exit code: %d\n# stdout:\n%s# stderr:\n%s",
		strings.Join(append([]string{"meshcert", "check"}, r.args...), " "), r.exitCode, r.stdout, r.stderr)
}

// The parts of a transcript that change from run to run: times, how long
// until them, and the webhook server's port.
var unstable = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`), "<time>"},
	{regexp.MustCompile(`in \d+ (days|hours)`), "in <n> $1"},
	{regexp.MustCompile(`127\.0\.0\.1:\d+`), "127.0.0.1:<port>"},
}

// assertCheckGolden compares a transcript, its unstable parts masked, with
// testdata/golden/NAME.txt, or rewrites the file with -update.
func assertCheckGolden(t *testing.T, name string, r checkRun) {
	t.Helper()
	got := r.String()
	for _, u := range unstable {
		got = u.re.ReplaceAllString(got, u.with)
	}
	path := filepath.Join("..", "testdata", "golden", name+".txt")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the golden file (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("meshcert check's output differs from %s (run with -update to accept it)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

// applyAtEnd applies a testdata file and deletes what it made when the test ends.
func applyAtEnd(t *testing.T, file string) {
	t.Helper()
	if run := runKubectl(t, "apply", "-f", file); run.exitCode != 0 {
		t.Fatalf("applying %s:\n%s", file, run)
	}
	t.Cleanup(func() { runKubectl(t, "delete", "--ignore-not-found", "-f", file) })
}

// caIssuerAtEnd creates a CA Issuer of the system namespace for ca, deleted
// with its Secret when the test ends.
func caIssuerAtEnd(t *testing.T, name string, ca *testpki.CA) *cmapi.Issuer {
	t.Helper()
	ctx := context.Background()
	if err := localcluster.CreateCAIssuers(ctx, testEnv.cluster.Client, []localcluster.CAIssuer{
		{Name: name, Namespace: systemNamespace, SecretName: name, SecretNamespace: systemNamespace, CA: ca},
	}); err != nil {
		t.Fatal(err)
	}
	issuer := &cmapi.Issuer{ObjectMeta: objectMeta(systemNamespace, name)}
	t.Cleanup(func() {
		_ = client.IgnoreNotFound(testEnv.cluster.Client.Delete(ctx, issuer))
		_ = client.IgnoreNotFound(testEnv.cluster.Client.Delete(ctx, &corev1.Secret{ObjectMeta: objectMeta(systemNamespace, name)}))
	})
	return issuer
}

// TestCheck runs `meshcert check` as a user would: on a healthy setup every
// check passes; an issuer gone and a root that expires within a week fail
// it; a pod that no identity selects fails `meshcert check workload`.
func TestCheck(t *testing.T) {
	startReconciler(t, nil)
	applyAtEnd(t, "check/healthy.yaml")
	waitFor(t, 20*time.Second, "check-served's MeshTrust", func() bool {
		mt := meshTrustOf(t, "check-served")
		return mt != nil && holds(trustedRoots(t, mt), testEnv.ca.Cert)
	})

	healthy := runCheck(t)
	if healthy.exitCode != 0 {
		t.Errorf("meshcert check of a healthy setup exited with %d:\n%s", healthy.exitCode, healthy)
	}
	assertCheckGolden(t, "check-healthy", healthy)
	asJSON := runCheck(t, "-o", "json")
	var report check.Report
	if err := json.Unmarshal([]byte(asJSON.stdout), &report); err != nil || asJSON.exitCode != 0 || len(report.Results) == 0 {
		t.Errorf("-o json: exit code %d, %d checks, %v:\n%s", asJSON.exitCode, len(report.Results), err, asJSON)
	}

	// Broken: an issuer gone once its MeshTrust was made, and a root that
	// expires in three days.
	gone, err := testpki.New("check-gone-ca", time.Now().Add(-time.Hour), time.Now().Add(testpki.LongLived))
	if err != nil {
		t.Fatal(err)
	}
	short, err := testpki.New("check-short-ca", time.Now().Add(-time.Hour), time.Now().Add(3*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	goneIssuer := caIssuerAtEnd(t, "check-gone-ca", gone)
	caIssuerAtEnd(t, "check-short-ca", short)
	applyAtEnd(t, "check/broken.yaml")
	for name, root := range map[string]*testpki.CA{"check-gone": gone, "check-short": short} {
		waitFor(t, 20*time.Second, name+"'s MeshTrust", func() bool {
			mt := meshTrustOf(t, name)
			return mt != nil && holds(trustedRoots(t, mt), root.Cert)
		})
	}
	if err := testEnv.cluster.Client.Delete(context.Background(), goneIssuer); err != nil {
		t.Fatal(err)
	}
	broken := runCheck(t)
	if broken.exitCode != 1 {
		t.Errorf("meshcert check of a broken setup exited with %d, want 1:\n%s", broken.exitCode, broken)
	}
	for _, want := range []string{
		"[fail] issuer: Issuer kong-mesh-system/check-gone-ca not found",
		"[fail] root: CN=check-short-ca (from the CA issuer's Secret kong-mesh-system/check-short-ca) expires",
	} {
		if !strings.Contains(broken.stdout, want) {
			t.Errorf("meshcert check does not say %q:\n%s", want, broken)
		}
	}
	assertCheckGolden(t, "check-broken", broken)

	// A pod in mesh check that no MeshIdentity selects.
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", "check-team")})
	createObject(t, &corev1.ServiceAccount{ObjectMeta: objectMeta("check-team", "web")})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "check-team", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-check", ServiceAccountName: "web",
			Containers: []corev1.Container{{Name: "web", Image: "web"}}},
	}
	createObject(t, pod)
	dp := newDataplane("check-team", "web", "check", map[string]string{"kuma.io/service": "web"})
	dp.Labels = map[string]string{"app": "web", kuma.NamespaceLabel: "check-team"}
	dp.Annotations = map[string]string{kuma.ServiceAccountLabel: "web"}
	dp.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID, Controller: ptr.To(true)}}
	createObject(t, dp)
	workload := runCheck(t, "workload", "check-team/web")
	if workload.exitCode != 1 || !strings.Contains(workload.stdout, "[fail] identity: no MeshIdentity selects it, and Mesh check has no enabled certmanager backend") {
		t.Errorf("meshcert check workload of a pod without identity:\n%s", workload)
	}
	assertCheckGolden(t, "check-workload", workload)
}
