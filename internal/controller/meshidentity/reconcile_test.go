package meshidentity

import (
	"crypto/x509"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/controllertest"
	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/internal/trust"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// trustDomain is Kuma's default template's, for mesh demo in zone west.
const trustDomain = "demo.west.mesh.local"

// harness is a Reconciler in a controllertest.Env.
type harness struct {
	*controllertest.Env
	r *Reconciler
}

// newHarness starts from objs; the Secrets and issuers among them are in the
// lookup index as well.
func newHarness(t *testing.T, objs ...client.Object) *harness {
	t.Helper()
	h := &harness{Env: controllertest.NewEnv(t, now, objs...)}
	h.r = New(Options{
		Client: h.Client, Lookup: h.Lookup, Recorder: h.Recorder, Clock: h.Clock,
		SystemNamespace: controllertest.SystemNamespace, Zone: "west", KeyAlgorithm: issuance.ECDSAP256,
		RequestTimeout: controllertest.RequestTimeout, Backoff: controllertest.Backoff,
	})
	return h
}

func (h *harness) reconcile() ctrl.Result {
	h.T.Helper()
	res, err := h.r.Reconcile(h.Ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: controllertest.SystemNamespace, Name: "agent"}})
	if err != nil {
		h.T.Fatalf("Reconcile: %v", err)
	}
	return res
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
		ObjectMeta: metav1.ObjectMeta{Namespace: controllertest.SystemNamespace, Name: "agent", UID: "agent-uid", Labels: map[string]string{kuma.MeshLabel: "demo"}, Annotations: a},
		Spec:       kuma.MeshIdentitySpec{Provider: &kuma.Provider{Type: kuma.ProviderTypeSpire}},
	}
}

// caSecret is the mesh Secret ca-cert of mesh demo, holding ca.
func caSecret(ca testpki.CA) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: controllertest.SystemNamespace, Name: "ca-cert", Labels: map[string]string{kuma.MeshLabel: "demo"}},
		Type:       kuma.MeshSecretType,
		Data:       map[string][]byte{kuma.SecretValueKey: ca.PEM},
	}
}

// meshTrust is a MeshTrust of identity agent that trusts roots, made by
// meshcert when managed.
func meshTrust(managed bool, roots ...*x509.Certificate) *kuma.MeshTrustResource {
	mt := &kuma.MeshTrustResource{
		ObjectMeta: metav1.ObjectMeta{Namespace: controllertest.SystemNamespace, Name: "agent", UID: "trust-uid",
			Labels:      map[string]string{kuma.MeshLabel: "demo"},
			Annotations: map[string]string{kuma.MeshIdentityAnnotation: "agent"}},
		Spec: kuma.MeshTrustSpec{TrustDomain: trustDomain, CABundles: []kuma.CABundle{{Type: "Pem", PEM: &kuma.PEM{Value: string(trust.EncodeRoots(roots))}}}},
	}
	if managed {
		mt.Labels[kuma.ManagedByLabel] = kuma.ManagedByValue
	}
	return mt
}

func withLabels(mt *kuma.MeshTrustResource, labels map[string]string) *kuma.MeshTrustResource {
	for k, v := range labels {
		mt.Labels[k] = v
	}
	return mt
}

// withOrigin gives a MeshTrust the status.origin meshcert writes for identity agent.
func withOrigin(mt *kuma.MeshTrustResource) *kuma.MeshTrustResource {
	mt.Status = &kuma.MeshTrustStatus{Origin: &kuma.Origin{KRI: ptr.To("kri_mid_demo_west_" + controllertest.SystemNamespace + "_agent_")}}
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
		// wantLabels are labels the MeshTrust has, among others.
		wantLabels map[string]string
		// wantOwned says the MeshIdentity controls the MeshTrust.
		wantOwned bool
	}{
		"a probe asks the issuer for its root": {
			objects:     []client.Object{identity(nil), controllertest.ReadyIssuer("local-ca")},
			wantProbes:  []string{"MeshIdentity:kong-mesh-system/agent"},
			wantRequeue: controllertest.RequestTimeout,
		},
		"a MeshTrust is created with the root the probe learned": {
			objects: []client.Object{identity(nil), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile()
				h.Respond(controllertest.SignedBy(ca, time.Hour))
			},
			wantEvents:  []string{"Normal MeshTrustCreated"},
			wantRequeue: rootRefresh,
			wantRoots:   []*x509.Certificate{ca.Cert},
		},
		"a denied probe is reported, and retried after its backoff": {
			objects: []client.Object{identity(nil), controllertest.ReadyIssuer("local-ca")},
			before: func(h *harness) {
				h.reconcile()
				h.Respond(controllertest.Denied)
			},
			wantEvents:  []string{"Warning RootUnknown"},
			wantRequeue: controllertest.FirstBackoff,
		},
		"a MeshTrust is created with the caCert": {
			objects:    []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca)},
			wantEvents: []string{"Normal MeshTrustCreated"},
			wantRoots:  []*x509.Certificate{ca.Cert},
			wantLabels: map[string]string{kuma.OriginLabel: kuma.OriginZone, kuma.ManagedByLabel: kuma.ManagedByValue},
		},
		"a MeshTrust that lost its owner gets it back": {
			objects:    []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca), withOrigin(withLabels(meshTrust(true, ca.Cert), map[string]string{kuma.OriginLabel: kuma.OriginZone}))},
			wantRoots:  []*x509.Certificate{ca.Cert},
			wantLabels: map[string]string{kuma.OriginLabel: kuma.OriginZone},
			wantOwned:  true,
		},
		"an update keeps the labels meshcert did not set": {
			objects:      []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca), withLabels(meshTrust(true, oldCA.Cert), map[string]string{"kuma.io/env": "kubernetes", "team": "payments"})},
			wantEvents:   []string{"Normal RootAdded"},
			wantRequeue:  time.Hour + time.Second,
			wantRoots:    []*x509.Certificate{ca.Cert, oldCA.Cert},
			wantRetiring: true,
			wantLabels:   map[string]string{"kuma.io/env": "kubernetes", "team": "payments", kuma.OriginLabel: kuma.OriginZone},
		},
		"a new root is trusted beside the old one": {
			objects:      []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca), meshTrust(true, oldCA.Cert)},
			wantEvents:   []string{"Normal RootAdded"},
			wantRequeue:  time.Hour + time.Second, // the identity's certificates' lifetime, from the next second
			wantRoots:    []*x509.Certificate{ca.Cert, oldCA.Cert},
			wantRetiring: true,
		},
		"the old root stays while its certificates can be valid": {
			objects: []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca), meshTrust(true, oldCA.Cert)},
			before: func(h *harness) {
				h.reconcile()
				h.Events()
				h.Clock.Step(30 * time.Minute)
			},
			wantRequeue:  30*time.Minute + time.Second,
			wantRoots:    []*x509.Certificate{ca.Cert, oldCA.Cert},
			wantRetiring: true,
		},
		"the old root is retired once its certificates have expired": {
			objects: []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca), meshTrust(true, oldCA.Cert)},
			before: func(h *harness) {
				h.reconcile()
				h.Events()
				h.Clock.Step(time.Hour + time.Second)
			},
			wantEvents: []string{"Normal RootRetired"},
			wantRoots:  []*x509.Certificate{ca.Cert},
		},
		"a MeshTrust meshcert did not make is left alone": {
			objects:     []client.Object{identity(fromSecret), controllertest.ReadyIssuer("local-ca"), caSecret(ca), meshTrust(false, oldCA.Cert)},
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

			h.WantOwners(tc.wantProbes)
			h.WantEvents(tc.wantEvents)
			h.WantRequeue(res, tc.wantRequeue)
			var mt kuma.MeshTrustResource
			err := h.Client.Get(h.Ctx, types.NamespacedName{Namespace: controllertest.SystemNamespace, Name: "agent"}, &mt)
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
			if owned := metav1.IsControlledBy(&mt, identity(nil)); tc.wantOwned && !owned {
				t.Errorf("the MeshTrust's owners are %+v, want the MeshIdentity", mt.OwnerReferences)
			}
			for k, v := range tc.wantLabels {
				if got, ok := mt.Labels[k]; !ok || got != v {
					t.Errorf("the MeshTrust's label %s = %q, want %q", k, got, v)
				}
			}
			if _, retiring := mt.Annotations[RetiringAnnotation]; retiring != tc.wantRetiring {
				t.Errorf("the MeshTrust lists a retiring root: %t, want %t", retiring, tc.wantRetiring)
			}
		})
	}
}
