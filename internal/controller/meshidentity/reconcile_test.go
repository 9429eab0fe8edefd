package meshidentity

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache/informertest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/internal/trust"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	systemNamespace = "kong-mesh-system"
	requestTimeout  = 10 * time.Second
	firstBackoff    = 5 * time.Second
	// trustDomain is Kuma's default template's, for mesh demo in zone west.
	trustDomain = "demo.west.mesh.local"
)

// harness is a Reconciler over a fake API server and a fake clock, with a
// lookup index fed by fake informers, as the manager's cache would feed it.
type harness struct {
	t        *testing.T
	ctx      context.Context
	client   client.Client
	clock    *clocktesting.FakeClock
	recorder *events.FakeRecorder
	r        *Reconciler
}

// indexer registers the indexes the Reconciler reads through with a fake
// client's builder, as the manager's field indexer does with its cache.
type indexer struct{ b *fake.ClientBuilder }

func (i indexer) IndexField(_ context.Context, obj client.Object, field string, f client.IndexerFunc) error {
	i.b.WithIndex(obj, field, f)
	return nil
}

// newHarness starts from objs; the Secrets and issuers among them are in the
// lookup index as well.
func newHarness(t *testing.T, objs ...client.Object) *harness {
	t.Helper()
	ctx := context.Background()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, kuma.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	b := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...)
	if err := issuance.IndexRequests(ctx, indexer{b}); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: ctx, client: b.Build(), clock: clocktesting.NewFakeClock(now), recorder: events.NewFakeRecorder(100)}
	informers := &informertest.FakeInformers{Scheme: scheme}
	index, err := lookup.NewIndex(ctx, informers, systemNamespace)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		switch obj.(type) {
		case *corev1.Secret, *cmapi.Issuer:
			informer, err := informers.FakeInformerFor(ctx, obj)
			if err != nil {
				t.Fatal(err)
			}
			informer.Add(obj)
		}
	}
	h.r = New(Options{
		Client: h.client, Lookup: index, Recorder: h.recorder, Clock: h.clock,
		SystemNamespace: systemNamespace, Zone: "west", KeyAlgorithm: issuance.ECDSAP256, RequestTimeout: requestTimeout,
		Backoff: issuance.BackoffPolicy{Initial: firstBackoff, Max: time.Minute},
	})
	return h
}

func (h *harness) reconcile() ctrl.Result {
	h.t.Helper()
	res, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: systemNamespace, Name: "agent"}})
	if err != nil {
		h.t.Fatalf("Reconcile: %v", err)
	}
	return res
}

func (h *harness) requests() []cmapi.CertificateRequest {
	h.t.Helper()
	var list cmapi.CertificateRequestList
	if err := h.client.List(h.ctx, &list); err != nil {
		h.t.Fatal(err)
	}
	return list.Items
}

// respond sets the status of the only request, as a signer or an approver
// would.
func (h *harness) respond(f func(*harness, *cmapi.CertificateRequest)) {
	h.t.Helper()
	crs := h.requests()
	if len(crs) != 1 {
		h.t.Fatalf("%d requests, want 1", len(crs))
	}
	f(h, &crs[0])
	if err := h.client.Update(h.ctx, &crs[0]); err != nil {
		h.t.Fatal(err)
	}
}

// events returns the Events recorded since the last call, each as its type
// and reason.
func (h *harness) events() []string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			typ, rest, _ := strings.Cut(e, " ")
			reason, _, _ := strings.Cut(rest, " ")
			out = append(out, typ+" "+reason)
		default:
			return out
		}
	}
}

func condition(typ cmapi.CertificateRequestConditionType, status cmmeta.ConditionStatus, reason string) cmapi.CertificateRequestCondition {
	return cmapi.CertificateRequestCondition{Type: typ, Status: status, Reason: reason, Message: reason}
}

// signedBy signs a request's CSR from ca, with status.ca set, as
// cert-manager's CA issuer does.
func signedBy(ca testpki.CA) func(*harness, *cmapi.CertificateRequest) {
	return func(h *harness, cr *cmapi.CertificateRequest) {
		csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
		if err != nil {
			h.t.Fatal(err)
		}
		cr.Status.Certificate = ca.IssuePublic(h.t, csr.PublicKey, csr.URIs, h.clock.Now().Add(-time.Minute), time.Hour)
		cr.Status.CA = ca.PEM
		cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", "Approved"), condition("Ready", "True", "Issued")}
	}
}

func denied(_ *harness, cr *cmapi.CertificateRequest) {
	cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Denied", "True", "PolicyDenied"), condition("Ready", "False", "Denied")}
}

// identity is MeshIdentity agent of mesh demo, served by meshcert's agent
// from the Issuer local-ca, with extra annotations.
func identity(annotations map[string]string) *kuma.MeshIdentityResource {
	a := map[string]string{
		kuma.IssuerNameAnnotation: "local-ca", kuma.IssuerKindAnnotation: "Issuer", kuma.IssuerGroupAnnotation: "cert-manager.io",
	}
	for k, v := range annotations {
		a[k] = v
	}
	return &kuma.MeshIdentityResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: "agent", UID: "agent-uid", Labels: map[string]string{kuma.MeshLabel: "demo"}, Annotations: a},
		Spec:       kuma.MeshIdentitySpec{Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire}},
	}
}

func readyIssuer(name string) *cmapi.Issuer {
	return &cmapi.Issuer{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: systemNamespace, ResourceVersion: "1"},
		Status:     cmapi.IssuerStatus{Conditions: []cmapi.IssuerCondition{{Type: cmapi.IssuerConditionReady, Status: cmmeta.ConditionTrue}}},
	}
}

// caSecret is the mesh Secret ca-cert of mesh demo, holding ca.
func caSecret(ca testpki.CA) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: "ca-cert", Labels: map[string]string{kuma.MeshLabel: "demo"}},
		Type:       kuma.MeshSecretType,
		Data:       map[string][]byte{kuma.SecretValueKey: ca.PEM},
	}
}

// meshTrust is a MeshTrust of identity agent that trusts roots, made by
// meshcert when managed.
func meshTrust(managed bool, roots ...*x509.Certificate) *kuma.MeshTrustResource {
	mt := &kuma.MeshTrustResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: "agent", UID: "trust-uid",
			Labels:      map[string]string{kuma.MeshLabel: "demo"},
			Annotations: map[string]string{kuma.MeshIdentityAnnotation: "agent"}},
		Spec: kuma.MeshTrustSpec{TrustDomain: trustDomain, CABundles: []kuma.CABundle{{Type: "Pem", PEM: &kuma.PEM{Value: string(trust.EncodeRoots(roots))}}}},
	}
	if managed {
		mt.Labels[kuma.ManagedByLabel] = kuma.ManagedByValue
	}
	return mt
}

func TestReconcile(t *testing.T) {
	ca, oldCA := testpki.NewCA(t, "ca", now), testpki.NewCA(t, "old", now)
	fromSecret := map[string]string{kuma.CACertSecretAnnotation: "ca-cert", kuma.DurationAnnotation: "1h"}
	tests := map[string]struct {
		objects []client.Object
		before  func(h *harness)
		// wantProbes are the owners of the requests left.
		wantProbes  []string
		wantEvents  []string
		wantRequeue time.Duration
		// wantRoots are the roots of the MeshTrust afterwards, none when nil;
		// wantRetiring says it lists a retiring root.
		wantRoots    []*x509.Certificate
		wantRetiring bool
		// wantForeign says the MeshTrust is not meshcert's.
		wantForeign bool
	}{
		"a probe asks the issuer for its root": {
			objects:     []client.Object{identity(nil), readyIssuer("local-ca")},
			wantProbes:  []string{"MeshIdentity:kong-mesh-system/agent"},
			wantRequeue: requestTimeout,
		},
		"a MeshTrust is created with the root the probe learned": {
			objects: []client.Object{identity(nil), readyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile()
				h.respond(signedBy(ca))
			},
			wantEvents:  []string{"Normal MeshTrustCreated"},
			wantRequeue: rootRefresh,
			wantRoots:   []*x509.Certificate{ca.Cert},
		},
		"a denied probe is reported, and retried after its backoff": {
			objects: []client.Object{identity(nil), readyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile()
				h.respond(denied)
			},
			wantEvents:  []string{"Warning RootUnknown"},
			wantRequeue: firstBackoff,
		},
		"a MeshTrust is created with the caCert": {
			objects:    []client.Object{identity(fromSecret), readyIssuer("local-ca"), caSecret(ca)},
			wantEvents: []string{"Normal MeshTrustCreated"},
			wantRoots:  []*x509.Certificate{ca.Cert},
		},
		"a new root is trusted beside the old one": {
			objects:      []client.Object{identity(fromSecret), readyIssuer("local-ca"), caSecret(ca), meshTrust(true, oldCA.Cert)},
			wantEvents:   []string{"Normal RootAdded"},
			wantRequeue:  time.Hour + time.Second, // the identity's certificates' lifetime, from the next second
			wantRoots:    []*x509.Certificate{ca.Cert, oldCA.Cert},
			wantRetiring: true,
		},
		"the old root stays while its certificates can be valid": {
			objects: []client.Object{identity(fromSecret), readyIssuer("local-ca"), caSecret(ca), meshTrust(true, oldCA.Cert)},
			before: func(h *harness) {
				h.reconcile()
				h.events()
				h.clock.Step(30 * time.Minute)
			},
			wantRequeue:  30*time.Minute + time.Second,
			wantRoots:    []*x509.Certificate{ca.Cert, oldCA.Cert},
			wantRetiring: true,
		},
		"the old root is retired once its certificates have expired": {
			objects: []client.Object{identity(fromSecret), readyIssuer("local-ca"), caSecret(ca), meshTrust(true, oldCA.Cert)},
			before: func(h *harness) {
				h.reconcile()
				h.events()
				h.clock.Step(time.Hour + time.Second)
			},
			wantEvents: []string{"Normal RootRetired"},
			wantRoots:  []*x509.Certificate{ca.Cert},
		},
		"a MeshTrust meshcert did not make is left alone": {
			objects:     []client.Object{identity(fromSecret), readyIssuer("local-ca"), caSecret(ca), meshTrust(false, oldCA.Cert)},
			wantEvents:  []string{"Warning MeshTrustConflict"},
			wantRoots:   []*x509.Certificate{oldCA.Cert},
			wantForeign: true,
		},
		"a deleted identity's MeshTrust is deleted": {
			objects: []client.Object{meshTrust(true, ca.Cert)},
		},
		"an identity whose MeshTrust is disabled has none": {
			objects: []client.Object{identity(map[string]string{kuma.MeshTrustAnnotation: "Disabled"}), meshTrust(true, ca.Cert)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, tc.objects...)
			if tc.before != nil {
				tc.before(h)
			}

			res := h.reconcile()

			var owners []string
			for _, cr := range h.requests() {
				owners = append(owners, cr.Annotations[issuance.OwnerAnnotation])
			}
			if diff := cmp.Diff(tc.wantProbes, owners); diff != "" {
				t.Errorf("the probes' owners (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantEvents, h.events()); diff != "" {
				t.Errorf("Events (-want +got):\n%s", diff)
			}
			if res.RequeueAfter != tc.wantRequeue {
				t.Errorf("RequeueAfter = %s, want %s", res.RequeueAfter, tc.wantRequeue)
			}
			var mt kuma.MeshTrustResource
			err := h.client.Get(h.ctx, types.NamespacedName{Namespace: systemNamespace, Name: "agent"}, &mt)
			switch {
			case apierrors.IsNotFound(err):
				if tc.wantRoots != nil {
					t.Fatal("no MeshTrust")
				}
				return
			case err != nil:
				t.Fatal(err)
			case tc.wantRoots == nil:
				t.Fatal("a MeshTrust is left, and should not be")
			}
			if got, want := trust.EncodeRoots(mt.Roots()), trust.EncodeRoots(tc.wantRoots); string(got) != string(want) {
				t.Errorf("the MeshTrust's roots are not the ones wanted")
			}
			if mt.Spec.TrustDomain != trustDomain || mt.Labels[kuma.MeshLabel] != "demo" {
				t.Errorf("the MeshTrust is for trust domain %q of mesh %q, want %q of demo", mt.Spec.TrustDomain, mt.Labels[kuma.MeshLabel], trustDomain)
			}
			if managed := mt.Labels[kuma.ManagedByLabel] == kuma.ManagedByValue; managed == tc.wantForeign {
				t.Errorf("the MeshTrust is meshcert's: %t, want %t", managed, !tc.wantForeign)
			}
			if _, retiring := mt.Annotations[RetiringAnnotation]; retiring != tc.wantRetiring {
				t.Errorf("the MeshTrust lists a retiring root: %t, want %t", retiring, tc.wantRetiring)
			}
		})
	}
}
