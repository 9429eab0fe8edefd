package dataplane

import (
	"context"
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
)

const (
	systemNamespace = "kong-mesh-system"
	requestTimeout  = 10 * time.Second
	// firstBackoff is the backoff after a first failure.
	firstBackoff = 5 * time.Second
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

func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, kuma.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return scheme
}

// newHarness starts from objs; the Secrets and issuers among them are in the
// lookup index as well.
func newHarness(t *testing.T, o Options, objs ...client.Object) *harness {
	t.Helper()
	ctx := context.Background()
	scheme := newScheme(t)
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

	o.Client, o.APIReader, o.Lookup, o.Recorder, o.Clock = h.client, h.client, index, h.recorder, h.clock
	o.SystemNamespace = systemNamespace
	o.KeyAlgorithm = issuance.ECDSAP256
	o.RequestTimeout = requestTimeout
	o.Backoff = issuance.BackoffPolicy{Initial: firstBackoff, Max: time.Minute}
	h.r = New(o)
	return h
}

func (h *harness) reconcile(key types.NamespacedName) ctrl.Result {
	h.t.Helper()
	res, err := h.r.Reconcile(h.ctx, ctrl.Request{NamespacedName: key})
	if err != nil {
		h.t.Fatalf("Reconcile: %v", err)
	}
	return res
}

func (h *harness) reconcileMesh(name string) ctrl.Result {
	h.t.Helper()
	res, err := h.r.ReconcileMesh(h.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: name}})
	if err != nil {
		h.t.Fatalf("ReconcileMesh: %v", err)
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

// secret is the dataplane's delivered Secret, or nil.
func (h *harness) secret(key types.NamespacedName) *corev1.Secret {
	h.t.Helper()
	var s corev1.Secret
	err := h.client.Get(h.ctx, types.NamespacedName{Namespace: key.Namespace, Name: SecretName(key.Name)}, &s)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return &s
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

// signedBy signs a request's CSR from ca, from the fake clock's now for
// lifetime, with status.ca set, as cert-manager's CA issuer does.
func signedBy(ca testpki.CA, lifetime time.Duration) func(*harness, *cmapi.CertificateRequest) {
	return func(h *harness, cr *cmapi.CertificateRequest) {
		csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
		if err != nil {
			h.t.Fatal(err)
		}
		cr.Status.Certificate = ca.IssuePublic(h.t, csr.PublicKey, csr.URIs, h.clock.Now().Add(-time.Minute), lifetime)
		cr.Status.CA = ca.PEM
		cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", "Approved"), condition("Ready", "True", "Issued")}
	}
}

func denied(_ *harness, cr *cmapi.CertificateRequest) {
	cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Denied", "True", "PolicyDenied"), condition("Ready", "False", "Denied")}
}

func failed(_ *harness, cr *cmapi.CertificateRequest) {
	cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", "Approved"), condition("Ready", "False", "Failed")}
}

// meshObject is mesh demo with spec.mtls as JSON.
func meshObject(mtls string) *kuma.MeshResource {
	return &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: "demo"}, Spec: []byte(`{"mtls":` + mtls + `}`)}
}

const (
	// certManagerMTLS enables a certmanager backend of the Issuer local-ca.
	certManagerMTLS = `{"enabledBackend":"cert-manager","backends":[{"name":"cert-manager","type":"certmanager","conf":{"issuerRef":{"name":"local-ca","kind":"Issuer","group":"cert-manager.io"}}}]}`
	builtinMTLS     = `{"enabledBackend":"ca-1","backends":[{"name":"ca-1","type":"builtin"}]}`
)

func readyIssuer(name string) *cmapi.Issuer {
	return &cmapi.Issuer{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: systemNamespace, ResourceVersion: "1"},
		Status: cmapi.IssuerStatus{Conditions: []cmapi.IssuerCondition{{
			Type: cmapi.IssuerConditionReady, Status: cmmeta.ConditionTrue,
		}}},
	}
}

var web = types.NamespacedName{Namespace: "demo-app", Name: "web"}

func webDataplane() *kuma.DataplaneResource {
	return &kuma.DataplaneResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: web.Namespace, Name: web.Name, UID: "web-uid"},
		Mesh:       "demo",
		Spec:       []byte(`{"networking":{"address":"10.0.0.1","inbound":[{"port":8080,"tags":{"kuma.io/service":"web"}}]}}`),
	}
}

func TestReconcile(t *testing.T) {
	ca := testpki.NewCA(t, "ca", now)
	// issued delivers web its certificate of 24h from ca.
	issued := func(h *harness) {
		h.reconcile(web)
		h.respond(signedBy(ca, 24*time.Hour))
		h.reconcile(web)
		h.events()
	}
	tests := map[string]struct {
		objects []client.Object
		// before runs ahead of the Reconcile under test.
		before func(h *harness)
		// wantRequests are the owners of the CertificateRequests left.
		wantRequests []string
		// wantSecret says a Secret with a certificate from ca is delivered.
		wantSecret bool
		wantEvents []string
		// wantRequeue is the result's RequeueAfter; wantRenewal wants it to
		// be when the delivered certificate is to be renewed instead.
		wantRequeue time.Duration
		wantRenewal bool
	}{
		"a dataplane of a certmanager mesh gets a CertificateRequest": {
			objects:      []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantRequeue:  requestTimeout,
		},
		"a request not yet signed is waited for until its deadline": {
			objects:      []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before:       func(h *harness) { h.reconcile(web); h.clock.Step(4 * time.Second) },
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantRequeue:  requestTimeout - 4*time.Second,
		},
		"an issued request is delivered as the dataplane's Secret, and deleted": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.respond(signedBy(ca, 24*time.Hour))
			},
			wantSecret:  true,
			wantRenewal: true,
		},
		"a denied request ends the attempt and backs off": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.respond(denied)
			},
			wantEvents:  []string{"Warning Denied", "Warning Denied"}, // on the Dataplane and on the Mesh
			wantRequeue: firstBackoff,
		},
		"a failed request ends the attempt and backs off": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.respond(failed)
			},
			wantEvents:  []string{"Warning Failed", "Warning Failed"},
			wantRequeue: firstBackoff,
		},
		"a failed attempt is not retried before its backoff ends": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.respond(failed)
				h.reconcile(web)
				h.events()
				h.clock.Step(2 * time.Second)
			},
			wantRequeue: firstBackoff - 2*time.Second,
		},
		"a failed attempt is retried once its backoff ends": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.respond(failed)
				h.reconcile(web)
				h.events()
				h.clock.Step(firstBackoff)
			},
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantRequeue:  requestTimeout,
		},
		"a missing issuer is reported on the Dataplane and the Mesh, and retried": {
			objects:     []client.Object{meshObject(certManagerMTLS), webDataplane()},
			wantEvents:  []string{"Warning IssuerNotFound", "Warning IssuerNotFound"},
			wantRequeue: firstBackoff,
		},
		"a mesh whose enabled backend is not certmanager gets nothing": {
			objects: []client.Object{meshObject(builtinMTLS), webDataplane(), readyIssuer("local-ca")},
		},
		"a mesh without mTLS gets nothing": {
			objects: []client.Object{meshObject(`{}`), webDataplane(), readyIssuer("local-ca")},
		},
		"a delivered certificate is left alone until its renewal": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				issued(h)
				h.clock.Step(time.Hour)
			},
			wantSecret:  true,
			wantRenewal: true,
		},
		"a renewal due by the clock asks for a new certificate": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				issued(h)
				// Renewal is due after 70% to 80% of the 24h lifetime.
				h.clock.Step(20 * time.Hour)
			},
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantSecret:   true,
			wantRequeue:  requestTimeout,
		},
		"a deleted Dataplane loses its Secret and its requests": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), readyIssuer("local-ca")},
			before: func(h *harness) {
				issued(h)
				h.clock.Step(20 * time.Hour)
				h.reconcile(web) // a renewal under way
				if err := h.client.Delete(h.ctx, webDataplane()); err != nil {
					h.t.Fatal(err)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Options{}, tc.objects...)
			if tc.before != nil {
				tc.before(h)
			}

			res := h.reconcile(web)

			var owners []string
			for _, cr := range h.requests() {
				owners = append(owners, cr.Annotations[issuance.OwnerAnnotation])
			}
			if diff := cmp.Diff(tc.wantRequests, owners); diff != "" {
				t.Errorf("the requests' owners (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantEvents, h.events()); diff != "" {
				t.Errorf("Events (-want +got):\n%s", diff)
			}
			s := h.secret(web)
			if (s != nil) != tc.wantSecret {
				t.Fatalf("a Secret is delivered: %t, want %t", s != nil, tc.wantSecret)
			}
			wantRequeue := tc.wantRequeue
			if s != nil {
				chain, err := pki.DecodeX509CertificateChainBytes(s.Data[corev1.TLSCertKey])
				if err != nil {
					t.Fatal(err)
				}
				if _, err := issuance.VerifyChain(chain, s.Data[kuma.CAKey], h.clock.Now()); err != nil {
					t.Errorf("the delivered certificate does not verify against its ca.crt: %v", err)
				}
				if got := pki.URLsToString(chain[0].URIs); !cmp.Equal(got, []string{"spiffe://demo/web", "kuma://kuma.io/service/web"}) {
					t.Errorf("the delivered certificate is for %v", got)
				}
				if string(s.Data[kuma.CAKey]) != string(ca.PEM) {
					t.Errorf("ca.crt is not the issuer's root")
				}
				if tc.wantRenewal {
					wantRequeue = issuance.RenewalTime(chain[0], web.String()).Sub(h.clock.Now())
				}
			}
			if res.RequeueAfter != wantRequeue {
				t.Errorf("RequeueAfter = %s, want %s", res.RequeueAfter, wantRequeue)
			}
		})
	}
}
