package agent

import (
	"crypto/x509"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/meshcert/meshcert/internal/controller/controllertest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
)

// svidsNow is when an SVIDs test starts; whole seconds, as certificates
// hold their times.
var svidsNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// svidLifetime is web's certificates': renewed 42 to 48 minutes after their
// notBefore, which SignedBy puts a minute before they are signed.
const svidLifetime = time.Hour

// webOwner is the owner annotation of web's requests from node-a.
const webOwner = "Agent:node-a/" + webID

// svidsHarness is node-a's SVIDs in a controllertest.Env, the identity web
// last asked for, and one connection's subscription to its updates.
type svidsHarness struct {
	*controllertest.Env
	s       *SVIDs
	ca      testpki.CA
	id      *Identity
	release func()
	sub     *subscription
}

func newSVIDsHarness(t *testing.T) *svidsHarness {
	t.Helper()
	h := &svidsHarness{Env: controllertest.NewEnv(t, svidsNow), ca: testpki.NewCA(t, "payments CA", svidsNow)}
	h.id = &Identity{
		SpiffeID: webID, TrustDomain: "payments.example.com", Mesh: "payments",
		MeshIdentity: types.NamespacedName{Namespace: controllertest.SystemNamespace, Name: "web"},
		Workload:     webPod(),
		IssuerRef:    cmmeta.IssuerReference{Group: "cert-manager.io", Kind: "ClusterIssuer", Name: "payments-ca"},
		Duration:     svidLifetime,
		KeyAlgorithm: issuance.ECDSAP256,
	}
	updates := NewUpdates()
	h.s = NewSVIDs(SVIDOptions{
		Client: h.Client, SystemNamespace: controllertest.SystemNamespace, Node: "node-a",
		Recorder: h.Recorder, Clock: h.Clock, RequestTimeout: controllertest.RequestTimeout, Backoff: controllertest.Backoff,
		Bundles: &Bundles{Cache: h.Client, SystemNamespace: controllertest.SystemNamespace}, Updates: updates,
	})
	var cancel func()
	h.sub, cancel = updates.subscribe(webID, webUID)
	t.Cleanup(cancel)
	return h
}

// want is a connection asking for h.id; h.release ends it.
func (h *svidsHarness) want() { h.release = h.s.Want(h.id) }

func (h *svidsHarness) reconcile() ctrl.Result {
	h.T.Helper()
	res, err := h.s.Reconcile(h.Ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: webID}})
	if err != nil {
		h.T.Fatalf("Reconcile: %v", err)
	}
	return res
}

// issued serves web a certificate of h.ca, signed now.
func (h *svidsHarness) issued() {
	h.want()
	h.reconcile()
	h.Respond(controllertest.SignedBy(h.ca, svidLifetime))
	h.reconcile()
}

// renewalDenied has the renewal of the certificate issued now, due after
// 50 minutes, denied.
func (h *svidsHarness) renewalDenied() {
	h.renewalRequested()
	h.Respond(controllertest.Denied)
}

// renewalRequested issues h.id, and lets the time of its renewal come: the
// agent makes the renewal's request.
func (h *svidsHarness) renewalRequested() {
	h.issued()
	h.Clock.Step(50 * time.Minute)
	h.reconcile() // its connections check their entitlement
	h.Clock.Step(recheckGrace)
	h.reconcile()
}

// wantRequests reports an error unless each request in the API server asks
// for h.id as the agent of node-a does.
func (h *svidsHarness) wantRequests() {
	h.T.Helper()
	for _, cr := range h.Requests() {
		if cr.Namespace != controllertest.SystemNamespace {
			h.T.Errorf("request %s is in namespace %s", cr.Name, cr.Namespace)
		}
		if got := cr.Labels[NodeLabel]; got != "node-a" {
			h.T.Errorf("request %s has %s=%q, want node-a", cr.Name, NodeLabel, got)
		}
		if got := cr.Labels[kuma.ManagedMeshLabel]; got != "payments" {
			h.T.Errorf("request %s has %s=%q, want payments", cr.Name, kuma.ManagedMeshLabel, got)
		}
		if got := cr.Annotations[kuma.MeshIdentityAnnotation]; got != "web" {
			h.T.Errorf("request %s has %s=%q, want web", cr.Name, kuma.MeshIdentityAnnotation, got)
		}
		if diff := cmp.Diff(h.id.IssuerRef, cr.Spec.IssuerRef); diff != "" {
			h.T.Errorf("request %s's issuerRef (-want +got):\n%s", cr.Name, diff)
		}
		if cr.Spec.Duration == nil || cr.Spec.Duration.Duration != h.id.Duration {
			h.T.Errorf("request %s's duration is %v, want %s", cr.Name, cr.Spec.Duration, h.id.Duration)
		}
		csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
		if err != nil {
			h.T.Fatal(err)
		}
		if got := pki.URLsToString(csr.URIs); !cmp.Equal(got, []string{webID}) {
			h.T.Errorf("request %s asks for URI SANs %v, want %s alone", cr.Name, got, webID)
		}
		if csr.PublicKeyAlgorithm != x509.ECDSA {
			h.T.Errorf("request %s is for a %s key, want ECDSA", cr.Name, csr.PublicKeyAlgorithm)
		}
	}
}

// TestSVIDsReconcile: each case steps web's certificate on node-a to a
// point of its life, and reconciles it once more.
func TestSVIDsReconcile(t *testing.T) {
	tests := map[string]struct {
		// before runs ahead of the Reconcile under test.
		before func(h *svidsHarness)
		// wantRequest wants one request for web left, else none.
		wantRequest bool
		wantEvents  []string
		// wantServed wants a certificate of the CA served, signed
		// wantServedAge before the Reconcile under test.
		wantServed    bool
		wantServedAge time.Duration
		// wantWoken wants web's connections woken by the Reconcile under
		// test; wantRecheck wants them told to check their entitlement.
		wantWoken, wantRecheck bool
		// wantDropped wants web forgotten.
		wantDropped bool
		// wantRequeue is the result's RequeueAfter; wantRenewal wants it to
		// be when the served certificate is to be renewed instead.
		wantRequeue time.Duration
		wantRenewal bool
	}{
		"an identity nobody wants gets nothing": {
			wantDropped: true,
		},
		"a wanted identity with no certificate gets a CertificateRequest": {
			before:      func(h *svidsHarness) { h.want() },
			wantRequest: true,
			wantRequeue: controllertest.RequestTimeout,
		},
		"a request not yet signed is waited for until its deadline": {
			before: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.Clock.Step(4 * time.Second)
			},
			wantRequest: true,
			wantRequeue: controllertest.RequestTimeout - 4*time.Second,
		},
		"a signed request becomes the served SVID, and is deleted": {
			before: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.Respond(controllertest.SignedBy(h.ca, svidLifetime))
			},
			wantServed:  true,
			wantWoken:   true,
			wantRenewal: true,
		},
		"a denied request is reported on the workload and the MeshIdentity, and backs off": {
			before: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.Respond(controllertest.Denied)
			},
			wantEvents:  []string{"Warning Denied", "Warning Denied"},
			wantRequeue: controllertest.FirstBackoff,
		},
		"a failed request is reported and backs off": {
			before: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.Respond(controllertest.Failed)
			},
			wantEvents:  []string{"Warning Failed", "Warning Failed"},
			wantRequeue: controllertest.FirstBackoff,
		},
		"a denied attempt is not retried before its backoff ends": {
			before: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.Respond(controllertest.Denied)
				h.reconcile()
				h.Clock.Step(2 * time.Second)
			},
			wantRequeue: controllertest.FirstBackoff - 2*time.Second,
		},
		"a second denial backs off twice as long": {
			before: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.Respond(controllertest.Denied)
				h.reconcile()
				h.Clock.Step(controllertest.FirstBackoff)
				h.reconcile()
				h.Respond(controllertest.Denied)
			},
			wantEvents:  []string{"Warning Denied", "Warning Denied"},
			wantRequeue: 2 * controllertest.FirstBackoff,
		},
		"an SVID not yet due is left alone until its renewal": {
			before: func(h *svidsHarness) {
				h.issued()
				h.Clock.Step(30 * time.Minute)
			},
			wantServed:    true,
			wantServedAge: 30 * time.Minute,
			wantRenewal:   true,
		},
		"an SVID due for renewal first has its connections check their entitlement": {
			before: func(h *svidsHarness) {
				h.issued()
				h.Clock.Step(50 * time.Minute)
			},
			wantServed:    true,
			wantServedAge: 50 * time.Minute,
			wantWoken:     true,
			wantRecheck:   true,
			wantRequeue:   recheckGrace,
		},
		"an SVID due for renewal is renewed after the recheck grace": {
			before: func(h *svidsHarness) {
				h.issued()
				h.Clock.Step(50 * time.Minute)
				h.reconcile()
				h.Clock.Step(recheckGrace)
			},
			wantRequest:   true,
			wantServed:    true,
			wantServedAge: 50*time.Minute + recheckGrace,
			wantRequeue:   controllertest.RequestTimeout,
		},
		"a signed renewal replaces the served SVID": {
			before: func(h *svidsHarness) {
				h.renewalRequested()
				h.Respond(controllertest.SignedBy(h.ca, svidLifetime))
			},
			wantServed:  true,
			wantWoken:   true,
			wantRenewal: true,
		},
		"a changed issuer is issued again at once, not at the renewal": {
			before: func(h *svidsHarness) {
				h.issued()
				h.Clock.Step(10 * time.Minute)
				h.id = &Identity{}
				*h.id = *h.s.Get(webID).Identity
				h.id.IssuerRef.Name = "payments-ca-2"
				h.want()
			},
			wantRequest:   true,
			wantServed:    true,
			wantServedAge: 10 * time.Minute,
			wantRequeue:   controllertest.RequestTimeout,
		},
		"a failed renewal warns of the coming expiry": {
			before:        func(h *svidsHarness) { h.renewalDenied() },
			wantEvents:    []string{"Warning Denied", "Warning Denied", "Warning IdentityExpiring", "Warning IdentityExpiring"},
			wantServed:    true,
			wantServedAge: 50*time.Minute + recheckGrace,
			wantRequeue:   controllertest.FirstBackoff,
		},
		"a second failed renewal of that certificate does not warn again": {
			before: func(h *svidsHarness) {
				h.renewalDenied()
				h.reconcile()
				h.Clock.Step(controllertest.FirstBackoff)
				h.reconcile()
				h.Respond(controllertest.Denied)
			},
			wantEvents:    []string{"Warning Denied", "Warning Denied"},
			wantServed:    true,
			wantServedAge: 50*time.Minute + recheckGrace + controllertest.FirstBackoff,
			wantRequeue:   2 * controllertest.FirstBackoff,
		},
		"a renewal whose request outlasts the certificate warns, and wakes at the expiry": {
			before: func(h *svidsHarness) {
				h.issued()
				// It expires 59 minutes after it was signed.
				h.Clock.Step(59*time.Minute - 5*time.Second)
				h.reconcile()
				h.Clock.Step(recheckGrace)
			},
			wantRequest:   true,
			wantEvents:    []string{"Warning IdentityExpiring", "Warning IdentityExpiring"},
			wantServed:    true,
			wantServedAge: 59*time.Minute - 5*time.Second + recheckGrace,
			wantRequeue:   5*time.Second - recheckGrace,
		},
		"an SVID past its expiry is not served, and its connections are told": {
			before: func(h *svidsHarness) {
				h.renewalDenied()
				h.reconcile()
				h.Clock.Step(10 * time.Minute)
			},
			wantRequest: true,
			wantWoken:   true,
			wantRequeue: controllertest.RequestTimeout,
		},
		"an identity released is kept for a returning caller until idleGrace": {
			before: func(h *svidsHarness) {
				h.issued()
				h.release()
				h.Clock.Step(idleGrace - time.Second)
			},
			wantServed:    true,
			wantServedAge: idleGrace - time.Second,
			wantRequeue:   time.Second,
		},
		"an identity released is dropped after idleGrace": {
			before: func(h *svidsHarness) {
				h.issued()
				h.release()
				h.Clock.Step(idleGrace)
			},
			wantDropped: true,
		},
		"an identity released while its request is open loses the request after idleGrace": {
			before: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.release()
				h.Clock.Step(idleGrace)
			},
			wantDropped: true,
		},
		"an identity wanted again within idleGrace is served at once": {
			before: func(h *svidsHarness) {
				h.issued()
				h.release()
				h.Clock.Step(idleGrace / 2)
				h.want()
			},
			wantServed:    true,
			wantServedAge: idleGrace / 2,
			wantRenewal:   true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newSVIDsHarness(t)
			if tc.before != nil {
				tc.before(h)
			}
			h.Events()
			received(h.sub.changed)
			h.s.updates.recheckDue(h.sub)

			res := h.reconcile()

			var owners []string
			if tc.wantRequest {
				owners = []string{webOwner}
			}
			h.WantOwners(owners)
			h.wantRequests()
			h.WantEvents(tc.wantEvents)
			if woken := received(h.sub.changed); woken != tc.wantWoken {
				t.Errorf("web's connections woken: %t, want %t", woken, tc.wantWoken)
			}
			if recheck := h.s.updates.recheckDue(h.sub); recheck != tc.wantRecheck {
				t.Errorf("web's connections told to check their entitlement: %t, want %t", recheck, tc.wantRecheck)
			}
			h.s.mu.Lock()
			dropped := h.s.ids[webID] == nil
			h.s.mu.Unlock()
			if dropped != tc.wantDropped {
				t.Errorf("web dropped: %t, want %t", dropped, tc.wantDropped)
			}

			svid := h.s.Get(webID)
			if (svid != nil) != tc.wantServed {
				t.Fatalf("an SVID is served: %t, want %t", svid != nil, tc.wantServed)
			}
			wantRequeue := tc.wantRequeue
			if svid != nil {
				leaf := svid.Leaf()
				if signed := leaf.NotBefore.Add(time.Minute); !signed.Equal(h.Clock.Now().Add(-tc.wantServedAge)) {
					t.Errorf("the served certificate was signed %s ago, want %s", h.Clock.Since(signed), tc.wantServedAge)
				}
				if svid.ID.String() != webID || !cmp.Equal(pki.URLsToString(leaf.URIs), []string{webID}) {
					t.Errorf("the served SVID is of %s, with URI SANs %v", svid.ID, pki.URLsToString(leaf.URIs))
				}
				if !svid.Root.Equal(h.ca.Cert) {
					t.Errorf("the served SVID verified to %s, not the CA", svid.Root.Subject)
				}
				if tc.wantRenewal {
					renewAt := issuance.RenewalTime(leaf, "node-a"+webID)
					lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
					if earliest, latest := leaf.NotBefore.Add(lifetime*7/10), leaf.NotBefore.Add(lifetime*4/5); renewAt.Before(earliest) || renewAt.After(latest) {
						t.Errorf("renewal at %s, want between %s and %s", renewAt, earliest, latest)
					}
					wantRequeue = renewAt.Sub(h.Clock.Now())
				}
			}
			h.WantRequeue(res, wantRequeue)
		})
	}
}
