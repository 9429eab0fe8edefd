package e2e

import (
	"context"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
)

// meshTrustOf returns a MeshTrust of the system namespace, or nil.
func meshTrustOf(t *testing.T, name string) *kuma.MeshTrustResource {
	t.Helper()
	var mt kuma.MeshTrustResource
	err := testEnv.cluster.Client.Get(context.Background(), client.ObjectKey{Namespace: systemNamespace, Name: name}, &mt)
	if client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	if err != nil {
		return nil
	}
	return &mt
}

func trustedRoots(t *testing.T, mt *kuma.MeshTrustResource) []*x509.Certificate {
	t.Helper()
	if len(mt.Spec.CABundles) != 1 || mt.Spec.CABundles[0].PEM == nil {
		t.Fatalf("caBundles %+v, want one PEM bundle", mt.Spec.CABundles)
	}
	roots, err := pki.DecodeX509CertificateSetBytes([]byte(mt.Spec.CABundles[0].PEM.Value))
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

func holds(roots []*x509.Certificate, want ...*x509.Certificate) bool {
	if len(roots) != len(want) {
		return false
	}
	for _, w := range want {
		if !slices.ContainsFunc(roots, w.Equal) {
			return false
		}
	}
	return true
}

// TestMeshTrustFollowsTheIssuersRoot: a served identity gets a MeshTrust with
// its issuer's root, learned by a probe; a rotation to another CA trusts the
// new root first and drops the old one only once no certificate it signed
// can still be valid; every step is an Event on the identity.
func TestMeshTrustFollowsTheIssuersRoot(t *testing.T) {
	startReconciler(t, nil)
	file := "meshtrust/agent-identity.yaml"
	if run := runKubectl(t, "apply", "-f", file); run.exitCode != 0 {
		t.Fatalf("applying %s:\n%s", file, run)
	}
	t.Cleanup(func() { runKubectl(t, "delete", "--ignore-not-found", "-f", file) })

	var mt *kuma.MeshTrustResource
	waitFor(t, 20*time.Second, "the MeshTrust with mesh-ca's root", func() bool {
		mt = meshTrustOf(t, "agent-trust")
		return mt != nil && holds(trustedRoots(t, mt), testEnv.ca.Cert)
	})
	if mt.Spec.TrustDomain != "demo.default.mesh.local" || mt.Labels[kuma.MeshLabel] != "demo" || mt.Labels[kuma.ManagedByLabel] != "meshcert" {
		t.Errorf("MeshTrust %s, labels %v: want trust domain demo.default.mesh.local, mesh demo, managed by meshcert", mt.Spec.TrustDomain, mt.Labels)
	}
	if mt.Status == nil || mt.Status.Origin == nil || *mt.Status.Origin.KRI != "kri_mid_demo_default_kong-mesh-system_agent-trust_" {
		t.Errorf("status.origin %+v, want the identity's KRI", mt.Status)
	}
	// Events are sent apart from the write they tell of, so they are waited for.
	event := func(reason, naming string) func() bool {
		return func() bool {
			return slices.ContainsFunc(eventsFor(t, "MeshIdentity", "agent-trust")[reason], func(n string) bool { return strings.Contains(n, naming) })
		}
	}
	waitFor(t, 10*time.Second, "a MeshTrustCreated Event on the identity", event("MeshTrustCreated", "mesh-ca"))
	waitFor(t, 10*time.Second, "the probe's cleanup", func() bool {
		return len(listRequests(t, client.MatchingLabels{kuma.ManagedByLabel: "meshcert"})) == 0
	})

	// Rotate: the identity moves to another CA.
	rotated := time.Now()
	if run := runKubectl(t, "-n", systemNamespace, "annotate", "--overwrite", "mid", "agent-trust", "meshcert.io/issuer-name=other-ca"); run.exitCode != 0 {
		t.Fatalf("rotating:\n%s", run)
	}
	waitFor(t, 20*time.Second, "both roots trusted", func() bool {
		return holds(trustedRoots(t, meshTrustOf(t, "agent-trust")), testEnv.ca.Cert, testEnv.other.Cert)
	})
	waitFor(t, 10*time.Second, "a RootAdded Event naming the new root", event("RootAdded", "other-ca"))
	waitFor(t, 40*time.Second, "the old root retired", func() bool {
		return holds(trustedRoots(t, meshTrustOf(t, "agent-trust")), testEnv.other.Cert)
	})
	if held := time.Since(rotated); held < 20*time.Second {
		t.Errorf("the old root left after %s, before its certificates' 20s lifetime could have passed", held)
	}
	waitFor(t, 10*time.Second, "a RootRetired Event naming the old root", event("RootRetired", "mesh-ca"))

	// Turned off, as Kuma's meshTrustCreation: Disabled does.
	if run := runKubectl(t, "-n", systemNamespace, "annotate", "mid", "agent-trust", "meshcert.io/mesh-trust=Disabled"); run.exitCode != 0 {
		t.Fatalf("disabling:\n%s", run)
	}
	waitFor(t, 10*time.Second, "the MeshTrust deleted", func() bool { return meshTrustOf(t, "agent-trust") == nil })
}

// TestMeshTrustOfKongMeshIdentities: without a caCert meshcert makes the
// MeshTrust Kong Mesh would not; with one it leaves it to Kong Mesh. A
// MeshTrust meshcert did not make is never touched.
func TestMeshTrustOfKongMeshIdentities(t *testing.T) {
	startReconciler(t, nil)
	for _, file := range []string{"meshtrust/kong-mesh-identities.yaml", "meshtrust/foreign.yaml"} {
		if run := runKubectl(t, "apply", "-f", file); run.exitCode != 0 {
			t.Fatalf("applying %s:\n%s", file, run)
		}
		t.Cleanup(func() { runKubectl(t, "delete", "--ignore-not-found", "-f", file) })
	}
	waitFor(t, 20*time.Second, "kong-no-ca's MeshTrust", func() bool {
		mt := meshTrustOf(t, "kong-no-ca")
		return mt != nil && mt.Spec.TrustDomain == "kong.example.com" && holds(trustedRoots(t, mt), testEnv.ca.Cert)
	})
	waitFor(t, 10*time.Second, "the Events of the left-alone", func() bool {
		return len(eventsFor(t, "MeshIdentity", "kong-with-ca")[meshtrustLeftToKongMesh]) > 0 &&
			len(eventsFor(t, "MeshIdentity", "taken")["MeshTrustConflict"]) > 0
	})
	if meshTrustOf(t, "kong-with-ca") != nil {
		t.Error("meshcert made a MeshTrust that Kong Mesh makes")
	}
	foreign := meshTrustOf(t, "taken")
	if foreign.Spec.TrustDomain != "someone-else.example.com" || foreign.Labels[kuma.ManagedByLabel] != "" || foreign.Annotations[kuma.MeshIdentityAnnotation] != "" {
		t.Errorf("the foreign MeshTrust was touched: %+v", foreign)
	}
}

const meshtrustLeftToKongMesh = "MeshTrustLeftToKongMesh"
