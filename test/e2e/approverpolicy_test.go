package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/controller/approval"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/localcluster"
	"github.com/meshcert/meshcert/test/chart"
	"github.com/meshcert/meshcert/test/harness"
)

// policyIssuer is the Issuer whose requests only approver-policy decides:
// the test's own approval hooks abstain on them.
const policyIssuer = "policy-ca"

// policyWebhookIssuer is the self-signed Issuer of the webhook's serving
// certificate in the chart's release "policy", which approver-policy decides.
const policyWebhookIssuer = "policy-meshcert-selfsigned"

// TestApproverPolicyAdmitsExactlyMeshcertsRequests runs approver-policy's own
// controller, applies the policies and RBAC the chart renders with
// approverPolicy.enabled, and runs meshcert as the chart's ServiceAccount.
// A dataplane of a mesh the policy names is issued; one of another mesh, and
// one whose mesh asks for a key the policy does not allow, are denied by
// approver-policy, and meshcert reports its message and backs off.
func TestApproverPolicyAdmitsExactlyMeshcertsRequests(t *testing.T) {
	ctx := context.Background()
	logPath := filepath.Join(t.TempDir(), "approver-policy.log")
	proc, err := harness.StartApproverPolicy(testEnv.cluster, systemNamespace, logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		proc.Kill()
		if t.Failed() {
			t.Logf("approver-policy's last log lines:\n%s\nmeshcert's:\n%s", localcluster.LastLines(localcluster.Logs(logPath), 40), localcluster.LastLines(testEnv.logs.String(), 40))
		}
	})
	if err := localcluster.CreateCAIssuers(ctx, testEnv.cluster.Client, []localcluster.CAIssuer{
		{Name: policyIssuer, Namespace: systemNamespace, SecretName: "mesh-ca", SecretNamespace: systemNamespace, CA: testEnv.ca},
	}); err != nil {
		t.Fatal(err)
	}

	const team, release = "policy-team", "policy"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", team)})
	manifests, err := chart.RenderRelease(release,
		"--set", "dataplaneNamespaces={"+team+"}",
		"--set", "approverPolicy.enabled=true",
		"--set", "approverPolicy.issuers[0].name="+policyIssuer,
		"--set", "approverPolicy.meshes={approved,rsa}",
		"--set", "approverPolicy.trustDomains={agents.approved.example.com}",
		"--set", "agent.enabled=true")
	if err != nil {
		t.Fatal(err)
	}
	var policies []string
	for _, obj := range manifests {
		switch obj.GetKind() {
		case "CertificateRequestPolicy":
			policies = append(policies, obj.GetName())
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
		default:
			continue // The Deployment, the DaemonSet and the rest are other tests'.
		}
		if err := testEnv.cluster.Client.Patch(ctx, obj, client.Apply, client.FieldOwner("helm"), client.ForceOwnership); err != nil {
			t.Fatalf("the API server refused %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		t.Cleanup(func() { _ = testEnv.cluster.Client.Delete(context.Background(), obj) })
	}
	if want := []string{"policy-meshcert-issuer-policy-ca-ecdsa-p256", "policy-meshcert-webhook"}; strings.Join(policies, ",") != strings.Join(want, ",") {
		t.Fatalf("the chart rendered policies %v, want %v", policies, want)
	}
	waitFor(t, 30*time.Second, "approver-policy to mark the policy Ready", func() bool {
		for _, p := range policies {
			out, _, err := kubectlIn(ctx, nil, "get", "certificaterequestpolicy", p, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
			if err != nil || out != "True" {
				return false
			}
		}
		return true
	})

	cfg, err := testEnv.cluster.MeshcertConfig(systemNamespace)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataplaneNamespaces = []string{team}
	cfg.WebhookPort = freePort(t) // served, not registered: its caches must sync
	cfg.KeepRequests = true
	cfg.RequestTimeout = 5 * time.Second
	cfg.BackoffInitial = 500 * time.Millisecond
	cfg.BackoffMax = 4 * time.Second
	serviceAccount := "system:serviceaccount:" + chart.Namespace + ":" + release + "-meshcert"
	use := func(policy string) authorizationv1.ResourceAttributes {
		return authorizationv1.ResourceAttributes{Verb: "use", Group: "policy.cert-manager.io", Resource: "certificaterequestpolicies", Name: policy, Namespace: systemNamespace}
	}
	if !allowedAs(t, serviceAccount, use(policies[0])) {
		t.Errorf("meshcert's ServiceAccount may not use %s", policies[0])
	}
	if allowedAs(t, serviceAccount, use("another-teams-policy")) {
		t.Error("meshcert's ServiceAccount may use any policy")
	}
	m, err := testEnv.cluster.StartMeshcert(ctx, cfg, localcluster.MeshcertOptions{Logs: testEnv.logs, As: serviceAccount})
	if err != nil {
		t.Fatalf("meshcert did not start as the chart's ServiceAccount: %v\n%s", err, localcluster.LastLines(testEnv.logs.String(), 30))
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Error(err)
		}
		for _, crs := range [][]cmapi.CertificateRequest{listRequests(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: team})} {
			for i := range crs {
				_ = testEnv.cluster.Client.Delete(context.Background(), &crs[i])
			}
		}
	})

	rsaMesh := strings.Replace(certManagerMesh("rsa", "Issuer", policyIssuer, "", ""),
		"  name: rsa\n", "  name: rsa\n  annotations:\n    meshcert.io/key-algorithm: rsa-2048\n", 1)
	intruderRequests := requestTimes(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: team, kuma.DataplaneNameLabel: "intruders"})
	for mesh, manifest := range map[string]string{
		"approved":  certManagerMesh("approved", "Issuer", policyIssuer, "", ""),
		"intruders": certManagerMesh("intruders", "Issuer", policyIssuer, "", ""),
		"rsa":       rsaMesh,
	} {
		applyMesh(t, manifest)
		deleteMeshAtEnd(t, mesh)
		createObject(t, newDataplane(team, mesh, mesh, map[string]string{"kuma.io/service": "web"}))
	}

	t.Run("a mesh the policy names is issued under it", func(t *testing.T) {
		s := waitSecret(t, team, "approved", 30*time.Second, nil)
		assertValidSecret(t, s, []string{"spiffe://approved/web", "kuma://kuma.io/service/web"}, testEnv.ca.Cert)
		crs := listRequests(t, client.MatchingLabels{kuma.DataplaneNamespaceLabel: team, kuma.DataplaneNameLabel: "approved"})
		if len(crs) == 0 {
			t.Fatal("no request kept")
		}
		cond := apiutil.GetCertificateRequestCondition(&crs[0], cmapi.CertificateRequestConditionApproved)
		if want := `Approved by CertificateRequestPolicy: "` + policies[0] + `"`; cond == nil || cond.Reason != "policy.cert-manager.io" || cond.Message != want {
			t.Errorf("Approved condition %+v, want approver-policy's with %q", cond, want)
		}
	})

	denied := map[string]struct {
		dataplane string
		want      string
	}{
		"a mesh the policy does not name is denied": {
			dataplane: "intruders",
			want:      `spec.allowed.uris.validations[1]: Invalid value: "spiffe://intruders/web": a SPIFFE ID of a mesh or trust domain this policy names: approved, rsa, agents.approved.example.com`,
		},
		"a key the policy does not allow is denied": {
			dataplane: "rsa",
			want:      `spec.constraints.privateKey.algorithm: Invalid value: "RSA": ECDSA`,
		},
	}
	for name, tc := range denied {
		t.Run(name, func(t *testing.T) {
			waitFor(t, 30*time.Second, "the Denied event", func() bool { return len(eventsFor(t, "Dataplane", tc.dataplane)["Denied"]) > 0 })
			notes := eventsFor(t, "Dataplane", tc.dataplane)["Denied"]
			if !strings.Contains(notes[0], "No policy approved this request: [") || !strings.Contains(notes[0], tc.want) {
				t.Errorf("Denied event %q lacks approver-policy's message %q", notes[0], tc.want)
			}
			if s := secretOf(t, team, tc.dataplane); s != nil {
				t.Error("a denied dataplane got a Secret")
			}
		})
	}

	t.Run("the denials read well in kubectl, and back off", func(t *testing.T) {
		run := runKubectl(t, "get", "events", "-n", team, "--field-selector", "involvedObject.name=intruders,reason=Denied",
			"-o", "custom-columns=TYPE:.type,REASON:.reason,OBJECT:.involvedObject.kind,MESSAGE:.message")
		if run.exitCode != 0 {
			t.Fatalf("kubectl get events:\n%s", run)
		}
		assertGolden(t, "denied-by-approver-policy", run)

		// Backoff 0.5s doubling to 4s: tries at about 0, 0.5, 1.5, 3.5 and
		// 7.5 seconds. A hot loop would make hundreds.
		time.Sleep(8 * time.Second)
		backoffGaps(t, intruderRequests(), 3, 8, 4*time.Second)
	})

	t.Run("the node agent's requests are meshcert's to approve, by node: approver-policy leaves them", func(t *testing.T) {
		createObject(t, &kuma.MeshIdentityResource{
			ObjectMeta: metav1.ObjectMeta{Name: "policy-agents", Namespace: systemNamespace, Labels: map[string]string{"kuma.io/mesh": "agents"},
				Annotations: map[string]string{kuma.IssuerNameAnnotation: policyIssuer}},
			Spec: kuma.MeshIdentitySpec{
				Selector: &kuma.IdentitySelector{Dataplane: &kuma.LabelSelector{MatchLabels: map[string]string{"app": "policy-agents"}}},
				SpiffeID: &kuma.SpiffeID{TrustDomain: ptr.To("agents.elsewhere.example.com")},
				Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire, Spire: []byte(`{}`)},
			},
		})
		pod := agentWorkload(t, team, "agent-allowed", agentNode, "policy-agents", nil)
		proc := newFakeProc(t)
		proc.inPod(t, string(pod.UID))
		var mu sync.Mutex
		approvals := map[string]string{}
		watchRequestEvents(t, client.MatchingLabels{agent.NodeLabel: agentNode}, func(_ watch.EventType, cr *cmapi.CertificateRequest) {
			if c := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionApproved); c != nil {
				mu.Lock()
				approvals[cr.Name] = c.Reason
				mu.Unlock()
			}
		})
		socket := startAgent(t, config.AttestorKubernetes, proc.root)

		// The trust domain is one no policy names, and the agent's
		// ServiceAccount may use no policy: approver-policy leaves the request
		// unprocessed, and meshcert approves it for the pod of the node.
		fetchCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		x509ctx, err := workloadapi.FetchX509Context(fetchCtx, workloadapi.WithAddr("unix://"+socket))
		if err != nil {
			t.Fatalf("the agent's workload got no SVID beside approver-policy: %v", err)
		}
		if got, want := x509ctx.SVIDs[0].ID.String(), "spiffe://agents.elsewhere.example.com/ns/"+team+"/sa/agent-allowed"; got != want {
			t.Errorf("SPIFFE ID %s, want %s", got, want)
		}
		// The agent deletes its request once used: its last state is seen then.
		waitFor(t, 10*time.Second, "the agent's used request", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(approvals) > 0
		})
		mu.Lock()
		defer mu.Unlock()
		for name, reason := range approvals {
			if reason != approval.Reason {
				t.Errorf("request %s approved by %q, want meshcert's %q", name, reason, approval.Reason)
			}
		}
	})

	t.Run("the webhook's own serving certificate is approved for cert-manager, and nothing else", func(t *testing.T) {
		// cert-manager's controller requests it; in the test cluster, a user
		// of that name may create requests in the release's namespace.
		const certManager = "system:serviceaccount:cert-manager:cert-manager"
		createObject(t, &rbacv1.Role{ObjectMeta: objectMeta(systemNamespace, "cert-manager-requests"),
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create", "get"}}}})
		createObject(t, &rbacv1.RoleBinding{ObjectMeta: objectMeta(systemNamespace, "cert-manager-requests"),
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "cert-manager-requests"},
			Subjects: []rbacv1.Subject{{Kind: "User", Name: certManager}}})
		as := rest.CopyConfig(testEnv.cluster.Config)
		as.Impersonate.UserName = certManager
		c := clientWith(t, as)
		svc := "policy-meshcert." + systemNamespace + ".svc"
		for name, tc := range map[string]struct {
			dnsNames []string
			approved bool
		}{
			"webhook-serving": {dnsNames: []string{svc, svc + ".cluster.local"}, approved: true},
			"webhook-other":   {dnsNames: []string{svc, "bank.example.com"}},
		} {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: tc.dnsNames}, key)
			if err != nil {
				t.Fatal(err)
			}
			cr := &cmapi.CertificateRequest{
				ObjectMeta: objectMeta(systemNamespace, name),
				Spec: cmapi.CertificateRequestSpec{
					Request:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
					IssuerRef: cmmeta.IssuerReference{Name: policyWebhookIssuer, Kind: "Issuer", Group: "cert-manager.io"},
					Duration:  &metav1.Duration{Duration: time.Hour},
					Usages:    []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment},
				},
			}
			if err := c.Create(ctx, cr); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = testEnv.cluster.Client.Delete(context.Background(), cr) })
			var reason string
			waitFor(t, 20*time.Second, "approver-policy's decision on "+name, func() bool {
				if err := testEnv.cluster.Client.Get(ctx, client.ObjectKeyFromObject(cr), cr); err != nil {
					t.Fatal(err)
				}
				for _, c := range cr.Status.Conditions {
					if c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied {
						reason = string(c.Type) + " by " + c.Reason
						return true
					}
				}
				return false
			})
			want := "Denied by policy.cert-manager.io"
			if tc.approved {
				want = "Approved by policy.cert-manager.io"
			}
			if reason != want {
				t.Errorf("%s: %s, want %s", name, reason, want)
			}
		}
	})
}
