package dataplane

import (
	"crypto/x509"
	"encoding/json"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/controller/controllertest"
	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
	"github.com/meshcert/meshcert/internal/trust"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestReconcileMesh(t *testing.T) {
	ca, nextCA := testpki.NewCA(t, "ca", now), testpki.NewCA(t, "next", now)
	caPEM, err := json.Marshal(string(ca.PEM))
	if err != nil {
		t.Fatal(err)
	}
	// rotating is mid-rotation: a second certmanager backend, of the Issuer
	// next-ca, that issued nothing yet; the enabled one names its caCert.
	rotating := func() *kuma.MeshResource {
		return meshObject(`{"enabledBackend":"cert-manager","backends":[` +
			`{"name":"cert-manager","type":"certmanager","conf":{"issuerRef":{"name":"local-ca"},"caCert":{"inlineString":` + string(caPEM) + `}}},` +
			`{"name":"next","type":"certmanager","conf":{"issuerRef":{"name":"next-ca"}}}]}`)
	}
	objects := func() []client.Object {
		return []client.Object{rotating(), controllertest.ReadyIssuer("local-ca"), controllertest.ReadyIssuer("next-ca")}
	}
	tests := map[string]struct {
		objects []client.Object
		publish bool
		before  func(h *harness)
		// wantProbes are the owners of the probes left.
		wantProbes  []string
		wantEvents  []string
		wantRequeue time.Duration
		// wantRoots are the mesh's roots afterwards; wantPublished those
		// published in its ConfigMap, none when nil.
		wantRoots     []*x509.Certificate
		wantPublished []*x509.Certificate
	}{
		"a backend that issued nothing gets a probe": {
			objects:     objects(),
			wantProbes:  []string{"Probe:demo/next"},
			wantRequeue: controllertest.RequestTimeout,
			wantRoots:   []*x509.Certificate{ca.Cert},
		},
		"an issued probe teaches the backend's root": {
			objects: objects(),
			before: func(h *harness) {
				h.reconcileMesh("demo")
				h.Respond(controllertest.SignedBy(nextCA, time.Hour))
			},
			wantEvents: []string{"Normal RootLearned"},
			wantRoots:  []*x509.Certificate{ca.Cert, nextCA.Cert},
		},
		"a learned root is published with the others": {
			objects: objects(),
			publish: true,
			before: func(h *harness) {
				h.reconcileMesh("demo")
				h.Respond(controllertest.SignedBy(nextCA, time.Hour))
			},
			wantEvents:    []string{"Normal RootLearned"},
			wantRoots:     []*x509.Certificate{ca.Cert, nextCA.Cert},
			wantPublished: []*x509.Certificate{ca.Cert, nextCA.Cert},
		},
		"nothing is published while a root is still to be learned": {
			objects:     objects(),
			publish:     true,
			wantProbes:  []string{"Probe:demo/next"},
			wantRequeue: controllertest.RequestTimeout,
			wantRoots:   []*x509.Certificate{ca.Cert},
		},
		"a denied probe is reported, and retried after its backoff": {
			objects: objects(),
			before: func(h *harness) {
				h.reconcileMesh("demo")
				h.Respond(controllertest.Denied)
			},
			wantEvents:  []string{"Warning RootUnknown"},
			wantRequeue: controllertest.FirstBackoff,
			wantRoots:   []*x509.Certificate{ca.Cert},
		},
		"a failed probe is not retried before its backoff ends": {
			objects: objects(),
			before: func(h *harness) {
				h.reconcileMesh("demo")
				h.Respond(controllertest.Failed)
				h.reconcileMesh("demo")
				h.Events()
				h.Clock.Step(2 * time.Second)
			},
			wantRequeue: controllertest.FirstBackoff - 2*time.Second,
			wantRoots:   []*x509.Certificate{ca.Cert},
		},
		"a failed probe is retried once its backoff ends": {
			objects: objects(),
			before: func(h *harness) {
				h.reconcileMesh("demo")
				h.Respond(controllertest.Failed)
				h.reconcileMesh("demo")
				h.Events()
				h.Clock.Step(controllertest.FirstBackoff)
			},
			wantProbes: []string{"Probe:demo/next"},
			// As it is: the failure is remembered until a root is learned,
			// and a failure whose retry time has passed is looked at again
			// every second, here while its new probe runs.
			wantRequeue: time.Second,
			wantRoots:   []*x509.Certificate{ca.Cert},
		},
		"a removed backend's probe is ended": {
			objects: objects(),
			before: func(h *harness) {
				h.reconcileMesh("demo")
				var mesh kuma.MeshResource
				if err := h.Client.Get(h.Ctx, types.NamespacedName{Name: "demo"}, &mesh); err != nil {
					h.T.Fatal(err)
				}
				mesh.Spec = meshObject(certManagerMTLS).Spec
				if err := h.Client.Update(h.Ctx, &mesh); err != nil {
					h.T.Fatal(err)
				}
			},
		},
		"a deleted mesh's probes are ended": {
			objects: objects(),
			before: func(h *harness) {
				h.reconcileMesh("demo")
				if err := h.Client.Delete(h.Ctx, rotating()); err != nil {
					h.T.Fatal(err)
				}
			},
		},
		"a deleted mesh's root expiry is forgotten": {
			before: func(*harness) { reportMeshRoots("demo", []*x509.Certificate{ca.Cert}) },
		},
		"a mesh whose one backend issues for its dataplanes probes nothing": {
			objects: []client.Object{meshObject(certManagerMTLS), controllertest.ReadyIssuer("local-ca")},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			meshRootExpiry.Reset()
			t.Cleanup(meshRootExpiry.Reset)
			h := newHarness(t, Options{PublishTrustBundles: tc.publish}, tc.objects...)
			if tc.before != nil {
				tc.before(h)
			}

			res := h.reconcileMesh("demo")

			// The gauge says when the earliest of the mesh's roots expires.
			switch n := testutil.CollectAndCount(meshRootExpiry); {
			case len(tc.wantRoots) == 0 && n != 0:
				t.Errorf("%d root expiry series for a mesh without roots", n)
			case len(tc.wantRoots) > 0 && n != 1:
				t.Errorf("%d root expiry series, want 1", n)
			case len(tc.wantRoots) > 0:
				earliest := slices.MinFunc(tc.wantRoots, func(a, b *x509.Certificate) int { return a.NotAfter.Compare(b.NotAfter) }).NotAfter
				if got := testutil.ToFloat64(meshRootExpiry.WithLabelValues("demo")); got != float64(earliest.Unix()) {
					t.Errorf("the mesh's root expiry is %v, want %d", got, earliest.Unix())
				}
			}

			for _, cr := range h.Requests() {
				if cr.Labels[ProbeLabel] != "true" || cr.Labels[kuma.ManagedMeshLabel] != "demo" {
					t.Errorf("request %s is not labelled as the mesh's probe: %v", cr.Name, cr.Labels)
				}
			}
			h.WantOwners(tc.wantProbes)
			h.WantEvents(tc.wantEvents)
			h.WantRequeue(res, tc.wantRequeue)
			var mesh kuma.MeshResource
			if err := h.Client.Get(h.Ctx, types.NamespacedName{Name: "demo"}, &mesh); err == nil {
				spec, _ := kuma.ParseMeshSpec(mesh.Spec)
				if got, want := h.r.meshRoots("demo", spec).Bundle(), trust.EncodeRoots(tc.wantRoots); string(got) != string(want) {
					t.Errorf("the mesh's roots are not the ones wanted")
				}
			}
			var cm corev1.ConfigMap
			err := h.Client.Get(h.Ctx, types.NamespacedName{Namespace: controllertest.SystemNamespace, Name: TrustBundleName("demo")}, &cm)
			switch {
			case apierrors.IsNotFound(err):
				if tc.wantPublished != nil {
					t.Error("the mesh's roots are not published")
				}
			case err != nil:
				t.Fatal(err)
			case tc.wantPublished == nil:
				t.Error("the mesh's roots are published, and should not be")
			case cm.Data[kuma.CAKey] != string(trust.EncodeRoots(tc.wantPublished)):
				t.Error("the published roots are not the ones wanted")
			}
		})
	}
}
