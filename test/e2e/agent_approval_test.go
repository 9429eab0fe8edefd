package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/config"
	"github.com/meshcert/meshcert/internal/agent"
	"github.com/meshcert/meshcert/internal/app"
	"github.com/meshcert/meshcert/internal/controller/approval"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

// TestAgentRequestsAreApprovedByNode steals the token of node-a's agent, a
// real pod-bound ServiceAccount token whose node cert-manager's webhook
// (here, the harness's stand-in of it) copies into each request, and tries
// with it what a thief would. meshcert approves only the identities of
// node-a's pods; the chart's ValidatingAdmissionPolicy keeps the agent's
// deletes to its own node's requests.
func TestAgentRequestsAreApprovedByNode(t *testing.T) {
	ctx := context.Background()
	const ns = "agent-approval"
	createObject(t, &corev1.Namespace{ObjectMeta: objectMeta("", ns)})
	applyAgentIdentities(t)
	agentWorkload(t, ns, "web", agentNode, "agent-web", nil)
	agentWorkload(t, ns, "vault", "node-b", "agent-web", nil)
	idOf := func(sa string) string { return "spiffe://agents.example.com/ns/" + ns + "/sa/" + sa }
	stolen := clientWith(t, agentCredentials(t, config.AttestorKubernetes, agentNode))

	// request makes, with the stolen token, the request the agent would
	// make for a workload's identity, changed by mutate.
	request := func(t *testing.T, name, workload, id string, mutate func(*cmapi.CertificateRequest)) *cmapi.CertificateRequest {
		t.Helper()
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: name,
				Labels:      map[string]string{kuma.ManagedByLabel: kuma.ManagedByValue, agent.NodeLabel: agentNode},
				Annotations: map[string]string{kuma.DataplaneAnnotation: ns + "/" + workload}},
			Spec: cmapi.CertificateRequestSpec{
				Request:   csrFor(t, id),
				IssuerRef: cmmeta.IssuerReference{Name: "mesh-ca", Kind: "Issuer", Group: "cert-manager.io"},
				Duration:  &metav1.Duration{Duration: 15 * time.Second},
				Usages:    issuance.WorkloadUsages,
			},
		}
		if mutate != nil {
			mutate(cr)
		}
		if err := stolen.Create(ctx, cr); err != nil {
			t.Fatalf("the agent's token may create requests: %v", err)
		}
		t.Cleanup(func() { _ = testEnv.cluster.Client.Delete(ctx, cr) })
		return cr
	}
	// decision waits for the request's Approved or Denied condition.
	decision := func(t *testing.T, cr *cmapi.CertificateRequest) *cmapi.CertificateRequestCondition {
		t.Helper()
		var c *cmapi.CertificateRequestCondition
		waitFor(t, 20*time.Second, "a decision on "+cr.Name, func() bool {
			if err := testEnv.cluster.Client.Get(ctx, client.ObjectKeyFromObject(cr), cr); err != nil {
				t.Fatal(err)
			}
			c = apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionApproved)
			if c == nil {
				c = apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionDenied)
			}
			return c != nil
		})
		return c
	}

	t.Run("the identity of a pod of the node is approved, by meshcert", func(t *testing.T) {
		cr := request(t, "stolen-own", "web", idOf("web"), nil)
		if cr.Spec.Extra[approval.NodeNameExtra][0] != agentNode {
			t.Fatalf("the request's extra %v does not name the token's node", cr.Spec.Extra)
		}
		if c := decision(t, cr); c.Type != cmapi.CertificateRequestConditionApproved || c.Reason != approval.Reason {
			t.Errorf("condition %s %s: %s, want Approved by meshcert", c.Type, c.Reason, c.Message)
		}
	})

	denied := map[string]struct {
		request      string
		workload, id string
		mutate       func(*cmapi.CertificateRequest)
		want         string
	}{
		"the identity of another node's pod": {
			request:  "stolen-other-node",
			workload: "vault", id: idOf("vault"),
			want: `pod agent-approval/vault runs on node "node-b", not the requester's "node-a"`,
		},
		"another identity than the pod's": {
			request:  "stolen-other-identity",
			workload: "web", id: idOf("vault"),
			want: "Dataplane agent-approval/web is " + idOf("web") + ", not " + idOf("vault"),
		},
		"a CA": {
			request:  "stolen-ca",
			workload: "web", id: idOf("web"), mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.IsCA = true },
			want: "a node agent may not request a CA",
		},
		"a longer lifetime than the MeshIdentity's": {
			request:  "stolen-long",
			workload: "web", id: idOf("web"), mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Duration.Duration = 24 * time.Hour },
			want: "the request asks for longer than MeshIdentity agent-web's lifetime, 15s",
		},
	}
	for name, tc := range denied {
		t.Run(name+" is denied", func(t *testing.T) {
			cr := request(t, tc.request, tc.workload, tc.id, tc.mutate)
			c := decision(t, cr)
			if c.Type != cmapi.CertificateRequestConditionDenied || c.Reason != approval.Reason || c.Message != tc.want {
				t.Errorf("condition %s %s: %q, want Denied by meshcert: %q", c.Type, c.Reason, c.Message, tc.want)
			}
			if cr.Status.Certificate != nil {
				t.Error("a denied request was signed")
			}
		})
	}

	t.Run("a request that hides from meshcert is approved by no one", func(t *testing.T) {
		cr := request(t, "stolen-unlabelled", "vault", idOf("vault"), func(cr *cmapi.CertificateRequest) { cr.Labels = nil })
		time.Sleep(3 * time.Second)
		if err := testEnv.cluster.Client.Get(ctx, client.ObjectKeyFromObject(cr), cr); err != nil {
			t.Fatal(err)
		}
		if apiutil.CertificateRequestIsApproved(cr) || cr.Status.Certificate != nil {
			t.Errorf("approved: %+v", cr.Status.Conditions)
		}
	})

	t.Run("an agent deletes its own node's requests, and no other node's", func(t *testing.T) {
		other := clientWith(t, agentCredentials(t, config.AttestorKubernetes, "node-b"))
		theirs := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: "node-b-request", Labels: map[string]string{kuma.ManagedByLabel: kuma.ManagedByValue}},
			Spec:       cmapi.CertificateRequestSpec{Request: csrFor(t, idOf("vault")), IssuerRef: cmmeta.IssuerReference{Name: "mesh-ca"}},
		}
		if err := other.Create(ctx, theirs); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = testEnv.cluster.Client.Delete(ctx, theirs) })
		err := stolen.Delete(ctx, theirs)
		if !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) || err == nil || !strings.Contains(err.Error(), "a node agent may delete only the CertificateRequests of its own node") {
			t.Errorf("node-a's agent deleting node-b's request: %v, want the policy's refusal", err)
		}
		if err := other.Delete(ctx, theirs); err != nil {
			t.Errorf("node-b's agent deleting its own request: %v", err)
		}
	})
}

// clientWith is a client with the credentials given.
func clientWith(t *testing.T, creds *rest.Config) client.Client {
	t.Helper()
	c, err := client.New(creds, client.Options{Scheme: app.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// csrFor is a CSR for a workload certificate of id, as the agent makes it.
func csrFor(t *testing.T, id string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
