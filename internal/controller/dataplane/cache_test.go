package dataplane

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"
	"unsafe"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/internal/kuma"
	"github.com/meshcert/meshcert/internal/testpki"
)

func deliveredForTest(name string, bundle string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: name + "-mtls", Namespace: "payments",
			Labels: map[string]string{
				kuma.ManagedByLabel: kuma.ManagedByValue, kuma.ManagedMeshLabel: "default",
				kuma.DataplaneNamespaceLabel: "payments", kuma.DataplaneNameLabel: name,
			},
			Annotations: map[string]string{
				kuma.MeshAnnotation: "default", kuma.BackendAnnotation: "cm", kuma.DataplaneNameAnnotation: name,
				kuma.DataplaneNamespaceAnnotation: "payments", kuma.IdentityHashAnnotation: "a71e1d23861ad9d7",
				kuma.IssuerHashAnnotation: "a0e547ec556822d9", kuma.NotAfterAnnotation: "2026-12-02T10:00:00Z",
				cmapi.IssuerNameAnnotationKey: "mesh-ca", cmapi.IssuerKindAnnotationKey: "Issuer",
				cmapi.IssuerGroupAnnotationKey: "cert-manager.io", cmapi.URISANAnnotationKey: "spiffe://default/" + name,
				"example.com/owner": "team-a",
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "kuma.io/v1alpha1", Kind: "Dataplane", Name: name}},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("chain of " + name), corev1.TLSPrivateKeyKey: []byte("key of " + name), kuma.CAKey: []byte(bundle)},
	}
}

func TestSecretCompactor(t *testing.T) {
	caSecret := deliveredForTest("ca", "roots")
	caSecret.Type = kuma.MeshSecretType
	unmanaged := deliveredForTest("other", "roots")
	delete(unmanaged.Labels, kuma.ManagedByLabel)
	forged := deliveredForTest("forged", "roots")
	forged.Type = corev1.SecretTypeOpaque
	delete(forged.Data, corev1.TLSPrivateKeyKey)
	forged.Annotations[cachedKeyAnnotation] = "ecdsa-p256"
	tests := map[string]struct {
		secret *corev1.Secret
		// compacted is whether the Secret is cached as a delivered one.
		compacted bool
	}{
		"a delivered Secret keeps what the reconciler reads": {secret: deliveredForTest("web", "roots"), compacted: true},
		"a mesh's CA Secret is cached whole":                 {secret: caSecret},
		"a Secret meshcert does not manage is cached whole":  {secret: unmanaged},
		"a cached key's verdict set by hand is dropped":      {secret: forged},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			before := test.secret.DeepCopy()
			(&SecretCompactor{}).Compact(test.secret)
			wantAnnotations, wantLabels, wantData := maps.Clone(before.Annotations), before.Labels, maps.Clone(before.Data)
			delete(wantAnnotations, cachedKeyAnnotation)
			if test.compacted {
				maps.DeleteFunc(wantAnnotations, func(k, _ string) bool { return !slices.Contains(readAnnotations, k) })
				// The test's key is no key at all.
				wantAnnotations[cachedKeyAnnotation] = keyUnreadable
				wantLabels = map[string]string{kuma.ManagedByLabel: kuma.ManagedByValue}
				delete(wantData, corev1.TLSPrivateKeyKey)
			}
			if !maps.Equal(test.secret.Annotations, wantAnnotations) {
				t.Errorf("annotations: got %v, want %v", test.secret.Annotations, wantAnnotations)
			}
			if !maps.Equal(test.secret.Labels, wantLabels) {
				t.Errorf("labels: got %v, want %v", test.secret.Labels, wantLabels)
			}
			if !maps.EqualFunc(test.secret.Data, wantData, func(a, b []byte) bool { return string(a) == string(b) }) {
				t.Errorf("data: got %q, want %q", test.secret.Data, wantData)
			}
			wantOwners := before.OwnerReferences
			if test.compacted {
				wantOwners = nil
			}
			if !slices.Equal(test.secret.OwnerReferences, wantOwners) {
				t.Errorf("owner references: got %v, want %v", test.secret.OwnerReferences, wantOwners)
			}
			if test.secret.Namespace != before.Namespace || test.secret.Type != before.Type {
				t.Errorf("metadata changed: got %+v, want %+v", test.secret.ObjectMeta, before.ObjectMeta)
			}
		})
	}
}

func TestSecretCompactorSharesBundles(t *testing.T) {
	c := &SecretCompactor{}
	a, b, other := deliveredForTest("a", "roots"), deliveredForTest("b", "roots"), deliveredForTest("c", "other roots")
	for _, s := range []*corev1.Secret{a, b, other} {
		c.Compact(s)
	}
	same := func(x, y []byte) bool { return unsafe.SliceData(x) == unsafe.SliceData(y) }
	if !same(a.Data[kuma.CAKey], b.Data[kuma.CAKey]) {
		t.Error("two Secrets with one bundle hold two copies of it")
	}
	if string(other.Data[kuma.CAKey]) != "other roots" {
		t.Errorf("another bundle became %q", other.Data[kuma.CAKey])
	}
	for i := range maxSharedBundles + 1 {
		c.Compact(deliveredForTest("x", string(rune('a'+i))+" roots"))
	}
	if len(c.bundles) > maxSharedBundles {
		t.Errorf("%d bundles shared, more than the bound of %d", len(c.bundles), maxSharedBundles)
	}
}

// storedSecrets are n Secrets as meshcert delivers them, in the protobuf the
// Secret informer decodes.
func storedSecrets(b *testing.B, n int) [][]byte {
	ca := testpki.NewCA(b, "mesh-ca", now)
	out := make([][]byte, n)
	for i := range out {
		name := fmt.Sprintf("web-%d", i)
		uris := testpki.URLs("spiffe://default/web", "kuma://kuma.io/service/web", "kuma://app/web-"+strconv.Itoa(i%50))
		p := &plan{
			dataplane: types.NamespacedName{Namespace: "payments", Name: name}, mesh: &kuma.MeshResource{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
			backend: "cm", issuerRef: cmmeta.IssuerReference{Name: "mesh-ca", Kind: "Issuer", Group: "cert-manager.io"},
			identityHash: kuma.Hash(pki.URLsToString(uris)...), issuerHash: "a0e547ec556822d9",
		}
		key := testpki.Key(b)
		keyPEM, err := pki.EncodePrivateKey(key, cmapi.PKCS8)
		if err != nil {
			b.Fatal(err)
		}
		chain := ca.Issue(b, key, uris, now, 24*time.Hour)
		leaf, err := pki.DecodeX509CertificateBytes(chain)
		if err != nil {
			b.Fatal(err)
		}
		dp := &kuma.DataplaneResource{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: name, UID: types.UID(fmt.Sprintf("5c0e2f9a-0000-4000-8000-%012d", i))}}
		s := secretFor(dp, p, map[string][]byte{corev1.TLSCertKey: chain, corev1.TLSPrivateKeyKey: keyPEM, kuma.CAKey: ca.PEM}, leaf)
		s.UID, s.ResourceVersion = types.UID(fmt.Sprintf("9d1b7c3e-0000-4000-8000-%012d", i)), strconv.Itoa(1000+i)
		if out[i], err = s.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// heapAfterGC is the live heap.
func heapAfterGC() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkCachedSecret measures the heap one delivered Secret takes in the
// Secret cache, as decoded and as SecretCompactor keeps it:
// go test ./reconciler -run X -bench CachedSecret
func BenchmarkCachedSecret(b *testing.B) {
	stored := storedSecrets(b, 1000)
	for _, form := range []struct {
		name      string
		transform func(*corev1.Secret)
	}{
		{"form=decoded", func(*corev1.Secret) {}},
		{"form=compacted", (&SecretCompactor{}).Compact},
	} {
		b.Run(form.name, func(b *testing.B) {
			var held uint64
			for range b.N {
				before := heapAfterGC()
				cached := make([]*corev1.Secret, len(stored))
				for i, raw := range stored {
					s := &corev1.Secret{}
					if err := s.Unmarshal(raw); err != nil {
						b.Fatal(err)
					}
					form.transform(s)
					cached[i] = s
				}
				held += heapAfterGC() - before
				runtime.KeepAlive(cached)
			}
			b.ReportMetric(float64(held)/float64(b.N*len(stored)), "B/secret")
		})
	}
}
