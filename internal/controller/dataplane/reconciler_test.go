package dataplane

import (
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/controllertest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
)

// harness is a Reconciler in a controllertest.Env.
type harness struct {
	*controllertest.Env
	r *Reconciler
}

// newHarness starts from objs; the Secrets and issuers among them are in the
// lookup index as well.
func newHarness(t *testing.T, o Options, objs ...client.Object) *harness {
	t.Helper()
	h := &harness{Env: controllertest.NewEnv(t, now, objs...)}
	o.Client, o.APIReader, o.Lookup, o.Recorder, o.Clock = h.Client, h.Client, h.Lookup, h.Recorder, h.Clock
	o.SystemNamespace = controllertest.SystemNamespace
	o.KeyAlgorithm = issuance.ECDSAP256
	o.RequestTimeout = controllertest.RequestTimeout
	o.Backoff = controllertest.Backoff
	h.r = New(o)
	return h
}

func (h *harness) reconcile(key types.NamespacedName) ctrl.Result {
	h.T.Helper()
	res, err := h.r.Reconcile(h.Ctx, ctrl.Request{NamespacedName: key})
	if err != nil {
		h.T.Fatalf("Reconcile: %v", err)
	}
	return res
}

func (h *harness) reconcileMesh(name string) ctrl.Result {
	h.T.Helper()
	res, err := h.r.ReconcileMesh(h.Ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: name}})
	if err != nil {
		h.T.Fatalf("ReconcileMesh: %v", err)
	}
	return res
}

// secret is the dataplane's delivered Secret, or nil.
func (h *harness) secret(key types.NamespacedName) *corev1.Secret {
	h.T.Helper()
	var s corev1.Secret
	err := h.Client.Get(h.Ctx, types.NamespacedName{Namespace: key.Namespace, Name: SecretName(key.Name)}, &s)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		h.T.Fatal(err)
	}
	return &s
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
		h.Respond(controllertest.SignedBy(ca, 24*time.Hour))
		h.reconcile(web)
		h.Events()
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
			objects:      []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantRequeue:  controllertest.RequestTimeout,
		},
		"a request not yet signed is waited for until its deadline": {
			objects:      []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before:       func(h *harness) { h.reconcile(web); h.Clock.Step(4 * time.Second) },
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantRequeue:  controllertest.RequestTimeout - 4*time.Second,
		},
		"an issued request is delivered as the dataplane's Secret, and deleted": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.Respond(controllertest.SignedBy(ca, 24*time.Hour))
			},
			wantSecret:  true,
			wantRenewal: true,
		},
		"a denied request ends the attempt and backs off": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.Respond(controllertest.Denied)
			},
			wantEvents:  []string{"Warning Denied", "Warning Denied"}, // on the Dataplane and on the Mesh
			wantRequeue: controllertest.FirstBackoff,
		},
		"a failed request ends the attempt and backs off": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.Respond(controllertest.Failed)
			},
			wantEvents:  []string{"Warning Failed", "Warning Failed"},
			wantRequeue: controllertest.FirstBackoff,
		},
		"a failed attempt is not retried before its backoff ends": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.Respond(controllertest.Failed)
				h.reconcile(web)
				h.Events()
				h.Clock.Step(2 * time.Second)
			},
			wantRequeue: controllertest.FirstBackoff - 2*time.Second,
		},
		"a failed attempt is retried once its backoff ends": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile(web)
				h.Respond(controllertest.Failed)
				h.reconcile(web)
				h.Events()
				h.Clock.Step(controllertest.FirstBackoff)
			},
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantRequeue:  controllertest.RequestTimeout,
		},
		"a missing issuer is reported on the Dataplane and the Mesh, and retried": {
			objects:     []client.Object{meshObject(certManagerMTLS), webDataplane()},
			wantEvents:  []string{"Warning IssuerNotFound", "Warning IssuerNotFound"},
			wantRequeue: controllertest.FirstBackoff,
		},
		"a mesh whose enabled backend is not certmanager gets nothing": {
			objects: []client.Object{meshObject(builtinMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
		},
		"a mesh without mTLS gets nothing": {
			objects: []client.Object{meshObject(`{}`), webDataplane(), controllertest.ReadyIssuer("local-ca")},
		},
		"a delivered certificate is left alone until its renewal": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				issued(h)
				h.Clock.Step(time.Hour)
			},
			wantSecret:  true,
			wantRenewal: true,
		},
		"a renewal due by the clock asks for a new certificate": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				issued(h)
				// Renewal is due after 70% to 80% of the 24h lifetime.
				h.Clock.Step(20 * time.Hour)
			},
			wantRequests: []string{"Dataplane:demo-app/web"},
			wantSecret:   true,
			wantRequeue:  controllertest.RequestTimeout,
		},
		"a deleted Dataplane loses its Secret and its requests": {
			objects: []client.Object{meshObject(certManagerMTLS), webDataplane(), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				issued(h)
				h.Clock.Step(20 * time.Hour)
				h.reconcile(web) // a renewal under way
				if err := h.Client.Delete(h.Ctx, webDataplane()); err != nil {
					h.T.Fatal(err)
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

			h.WantOwners(tc.wantRequests)
			h.WantEvents(tc.wantEvents)
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
				if _, err := issuance.VerifyChain(chain, s.Data[kuma.CAKey], h.Clock.Now()); err != nil {
					t.Errorf("the delivered certificate does not verify against its ca.crt: %v", err)
				}
				if got := pki.URLsToString(chain[0].URIs); !cmp.Equal(got, []string{"spiffe://demo/web", "kuma://kuma.io/service/web"}) {
					t.Errorf("the delivered certificate is for %v", got)
				}
				if string(s.Data[kuma.CAKey]) != string(ca.PEM) {
					t.Errorf("ca.crt is not the issuer's root")
				}
				if tc.wantRenewal {
					wantRequeue = issuance.RenewalTime(chain[0], web.String()).Sub(h.Clock.Now())
				}
			}
			h.WantRequeue(res, wantRequeue)
		})
	}
}
