package approval

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/controllertest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
)

const (
	agentUser = "system:serviceaccount:meshcert:meshcert-agent"
	node      = "node-a"
	webID     = "spiffe://demo.west.mesh.local/ns/shop/sa/web"
)

var now = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

// identity is a served Spire MeshIdentity of mesh demo for every Dataplane,
// issuing from Issuer mesh-ca for at most an hour.
func identity() *kuma.MeshIdentityResource {
	return &kuma.MeshIdentityResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: controllertest.SystemNamespace, Name: "spire", Labels: map[string]string{kuma.MeshLabel: "demo"},
			Annotations: map[string]string{kuma.IssuerNameAnnotation: "mesh-ca", kuma.DurationAnnotation: "1h"}},
		Spec: kuma.MeshIdentitySpec{
			Selector: &kuma.IdentitySelector{Dataplane: &kuma.LabelSelector{MatchLabels: map[string]string{}}},
			Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire, Spire: json.RawMessage(`{}`)},
		},
	}
}

// pod is shop/web on nodeName.
func pod(nodeName string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "web-uid"},
		Spec:       corev1.PodSpec{NodeName: nodeName, ServiceAccountName: "web"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

// dataplane is the Dataplane Kuma makes for pod(), as Kuma stores it.
func dataplane(mutate ...func(*kuma.DataplaneResource)) *kuma.DataplaneResource {
	dp := &kuma.DataplaneResource{
		Mesh: "demo",
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web",
			Labels:          map[string]string{kuma.MeshLabel: "demo", kuma.NamespaceLabel: "shop"},
			Annotations:     map[string]string{kuma.ServiceAccountLabel: "web"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "web", UID: "web-uid", Controller: ptr.To(true)}},
		},
	}
	for _, m := range mutate {
		m(dp)
	}
	return dp
}

// csr is a CSR for uri, with dns names and basic constraints if asked.
func csr(t testing.TB, uri string, dns []string, constraints *basicConstraints) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	if constraints != nil {
		value, err := asn1.Marshal(*constraints)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidBasicConstraints, Critical: true, Value: value}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

type basicConstraints struct {
	IsCA bool `asn1:"optional"`
}

// request is what the agent of node asks for web's identity.
func request(t *testing.T, mutate ...func(*cmapi.CertificateRequest)) *cmapi.CertificateRequest {
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: controllertest.SystemNamespace, Name: "agent-web", CreationTimestamp: metav1.NewTime(now),
			Annotations: map[string]string{kuma.DataplaneAnnotation: "shop/web"}},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr(t, webID, nil, nil),
			IssuerRef: cmmeta.IssuerReference{Name: "mesh-ca", Kind: "Issuer", Group: "cert-manager.io"},
			Duration:  &metav1.Duration{Duration: time.Hour},
			Usages:    issuance.WorkloadUsages,
			Username:  agentUser,
			Extra:     map[string][]string{NodeNameExtra: {node}},
		},
	}
	for _, m := range mutate {
		m(cr)
	}
	return cr
}

func TestReconcile(t *testing.T) {
	tests := map[string]struct {
		objects func(t *testing.T) []client.Object
		// age is how long ago the request was made.
		age time.Duration
		// signers are those meshcert approves; default: every Issuer's.
		signers     []string
		wantApprove bool
		// wantDeny is a part of the Denied condition's message; "" with
		// wantApprove false is no decision at all.
		wantDeny    string
		wantRequeue time.Duration
		wantEvents  []string
	}{
		"approves the identity of a pod on the requesting node": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t)}
			},
			wantApprove: true,
			wantEvents:  []string{"Normal Approved"},
		},
		"a stolen agent token of another node: the pod is not on it": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod("node-b"), dataplane(), request(t)}
			},
			wantDeny: `pod shop/web runs on node "node-b", not the requester's "node-a"`,
		},
		"a CA": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) { cr.Spec.IsCA = true })}
			},
			wantDeny: "a node agent may not request a CA",
		},
		"a CSR that asks for CA basic constraints": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) {
					cr.Spec.Request = csr(t, webID, nil, &basicConstraints{IsCA: true})
				})}
			},
			wantDeny: "the CSR asks for a CA",
		},
		"a token that names no node": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) { cr.Spec.Extra = nil })}
			},
			wantDeny: "the requester's token names no node",
		},
		"another identity than the Dataplane's": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) {
					cr.Spec.Request = csr(t, "spiffe://demo.west.mesh.local/ns/bank/sa/vault", nil, nil)
				})}
			},
			wantDeny: "Dataplane shop/web is " + webID + ", not spiffe://demo.west.mesh.local/ns/bank/sa/vault",
		},
		"a DNS name besides the SPIFFE ID": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) {
					cr.Spec.Request = csr(t, webID, []string{"bank.example.com"}, nil)
				})}
			},
			wantDeny: "the CSR may name no DNS name",
		},
		"a usage a workload has no need of": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) {
					cr.Spec.Usages = append(cr.Spec.Usages, cmapi.UsageCertSign)
				})}
			},
			wantDeny: `may not have usage "cert sign"`,
		},
		"a hand-written Dataplane that no Pod controls": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(func(dp *kuma.DataplaneResource) { dp.OwnerReferences = nil }), request(t)}
			},
			wantDeny: "Dataplane shop/web is not controlled by pod web",
		},
		"a pod that claims another namespace": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(func(dp *kuma.DataplaneResource) { dp.Labels[kuma.NamespaceLabel] = "bank" }), request(t)}
			},
			wantDeny: `names namespace "bank"`,
		},
		"another issuer than the MeshIdentity's": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) { cr.Spec.IssuerRef.Name = "root-ca" })}
			},
			wantDeny: "MeshIdentity spire issues from Issuer mesh-ca",
		},
		"longer than the MeshIdentity's lifetime": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t, func(cr *cmapi.CertificateRequest) { cr.Spec.Duration.Duration = 48 * time.Hour })}
			},
			wantDeny: "longer than MeshIdentity spire's lifetime, 1h0m0s",
		},
		"a pod that has ended": {
			objects: func(t *testing.T) []client.Object {
				p := pod(node)
				p.Status.Phase = corev1.PodSucceeded
				return []client.Object{identity(), p, dataplane(), request(t)}
			},
			wantDeny: "pod shop/web has ended",
		},
		"a Dataplane not seen yet waits": {
			objects:     func(t *testing.T) []client.Object { return []client.Object{identity(), pod(node), request(t)} },
			wantRequeue: time.Second,
		},
		"a Dataplane still missing after the wait is denied": {
			objects:  func(t *testing.T) []client.Object { return []client.Object{identity(), pod(node), request(t)} },
			age:      pendingFor,
			wantDeny: "Dataplane shop/web does not exist",
		},
		"a Dataplane of the unix attestor bound to the requesting node": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), request(t), dataplane(func(dp *kuma.DataplaneResource) {
					dp.OwnerReferences = nil
					dp.Annotations[kuma.NodeNameAnnotation] = node
				})}
			},
			wantApprove: true,
			wantEvents:  []string{"Normal Approved"},
		},
		"a Dataplane of the unix attestor bound to another node": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), request(t), dataplane(func(dp *kuma.DataplaneResource) {
					dp.OwnerReferences = nil
					dp.Annotations[kuma.NodeNameAnnotation] = "node-b"
				})}
			},
			wantDeny: `Dataplane shop/web is bound to node "node-b", not the requester's "node-a"`,
		},
		"a request of a signer it does not approve is left to other approvers": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod("node-b"), dataplane(), request(t)}
			},
			signers: []string{"clusterissuers.cert-manager.io/*", "issuers.cert-manager.io/" + controllertest.SystemNamespace + ".other-ca"},
		},
		"a signer named exactly": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod(node), dataplane(), request(t)}
			},
			signers:     []string{"issuers.cert-manager.io/" + controllertest.SystemNamespace + ".mesh-ca"},
			wantApprove: true,
			wantEvents:  []string{"Normal Approved"},
		},
		"a request of another user is left to other approvers": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod("node-b"), dataplane(), request(t, func(cr *cmapi.CertificateRequest) {
					cr.Spec.Username = "system:serviceaccount:meshcert:meshcert"
				})}
			},
		},
		"a request approved by another approver is reported": {
			objects: func(t *testing.T) []client.Object {
				return []client.Object{identity(), pod("node-b"), dataplane(), request(t, func(cr *cmapi.CertificateRequest) {
					apiutil.SetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "cert-manager.io", "Certificate request has been approved by cert-manager.io")
				})}
			},
			wantApprove: true,
			wantEvents:  []string{"Warning ApprovedElsewhere"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			env := controllertest.NewEnv(t, now.Add(tc.age), tc.objects(t)...)
			if tc.signers == nil {
				tc.signers = []string{"issuers.cert-manager.io/*"}
			}
			mapper := meta.NewDefaultRESTMapper([]schema.GroupVersion{cmapi.SchemeGroupVersion})
			mapper.Add(cmapi.SchemeGroupVersion.WithKind(cmapi.IssuerKind), meta.RESTScopeNamespace)
			mapper.Add(cmapi.SchemeGroupVersion.WithKind(cmapi.ClusterIssuerKind), meta.RESTScopeRoot)
			r := &Reconciler{
				Client: env.Client, Live: env.Client, Identities: env.Client,
				SystemNamespace: controllertest.SystemNamespace, Zone: "west", AgentUser: agentUser,
				Signers: tc.signers, Mapper: mapper, Recorder: env.Recorder, Clock: env.Clock,
			}
			key := types.NamespacedName{Namespace: controllertest.SystemNamespace, Name: "agent-web"}
			res, err := r.Reconcile(env.Ctx, ctrl.Request{NamespacedName: key})
			if err != nil {
				t.Fatal(err)
			}
			env.WantRequeue(res, tc.wantRequeue)
			cr := &cmapi.CertificateRequest{}
			if err := env.Client.Get(env.Ctx, key, cr); err != nil {
				t.Fatal(err)
			}
			if got := apiutil.CertificateRequestIsApproved(cr); got != tc.wantApprove {
				t.Errorf("approved = %v, want %v", got, tc.wantApprove)
			}
			denied := apiutil.GetCertificateRequestCondition(cr, cmapi.CertificateRequestConditionDenied)
			switch {
			case tc.wantDeny == "" && denied != nil:
				t.Errorf("denied: %s", denied.Message)
			case tc.wantDeny != "" && denied == nil:
				t.Errorf("not denied, want %q", tc.wantDeny)
			case tc.wantDeny != "" && !strings.Contains(denied.Message, tc.wantDeny):
				t.Errorf("denied with %q, want %q in it", denied.Message, tc.wantDeny)
			}
			if tc.wantDeny != "" {
				return // The message is checked above; the Event repeats it.
			}
			env.WantEvents(tc.wantEvents)
		})
	}
}
