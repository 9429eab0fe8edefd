package reconciler

import (
	"maps"
	"testing"
	"unsafe"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/model"
)

func deliveredForTest(name string, bundle string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: name + "-mtls", Namespace: "payments",
			Labels: map[string]string{
				model.ManagedByLabel: model.ManagedByValue, model.ManagedMeshLabel: "default",
				model.DataplaneNamespaceLabel: "payments", model.DataplaneNameLabel: name,
			},
			Annotations: map[string]string{
				model.MeshAnnotation: "default", model.BackendAnnotation: "cm", model.DataplaneNameAnnotation: name,
				model.DataplaneNamespaceAnnotation: "payments", model.IdentityHashAnnotation: "a71e1d23861ad9d7",
				model.IssuerHashAnnotation: "a0e547ec556822d9", model.NotAfterAnnotation: "2026-12-02T10:00:00Z",
				cmapi.IssuerNameAnnotationKey: "mesh-ca", cmapi.IssuerKindAnnotationKey: "Issuer",
				cmapi.IssuerGroupAnnotationKey: "cert-manager.io", cmapi.URISANAnnotationKey: "spiffe://default/" + name,
				"example.com/owner": "team-a",
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "kuma.io/v1alpha1", Kind: "Dataplane", Name: name}},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("chain of " + name), corev1.TLSPrivateKeyKey: []byte("key of " + name), model.CAKey: []byte(bundle)},
	}
}

func TestSecretCompactor(t *testing.T) {
	caSecret := deliveredForTest("ca", "roots")
	caSecret.Type = model.MeshSecretType
	unmanaged := deliveredForTest("other", "roots")
	delete(unmanaged.Labels, model.ManagedByLabel)
	tests := map[string]struct {
		secret *corev1.Secret
		// trimmed is whether the annotations meshcert never reads are left out.
		trimmed bool
	}{
		"a delivered Secret keeps what the reconciler reads": {secret: deliveredForTest("web", "roots"), trimmed: true},
		"a mesh's CA Secret is cached whole":                 {secret: caSecret},
		"a Secret meshcert does not manage is cached whole":  {secret: unmanaged},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			before := test.secret.DeepCopy()
			(&SecretCompactor{}).Compact(test.secret)
			wantAnnotations := maps.Clone(before.Annotations)
			if test.trimmed {
				for _, k := range writtenNotRead {
					delete(wantAnnotations, k)
				}
			}
			if !maps.Equal(test.secret.Annotations, wantAnnotations) {
				t.Errorf("annotations: got %v, want %v", test.secret.Annotations, wantAnnotations)
			}
			if !maps.Equal(test.secret.Labels, before.Labels) {
				t.Errorf("labels: got %v, want %v", test.secret.Labels, before.Labels)
			}
			if !maps.EqualFunc(test.secret.Data, before.Data, func(a, b []byte) bool { return string(a) == string(b) }) {
				t.Errorf("data changed: got %q, want %q", test.secret.Data, before.Data)
			}
			if test.secret.Namespace != before.Namespace || test.secret.Type != before.Type || test.secret.OwnerReferences[0] != before.OwnerReferences[0] {
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
	if !same(a.Data[model.CAKey], b.Data[model.CAKey]) {
		t.Error("two Secrets with one bundle hold two copies of it")
	}
	if string(other.Data[model.CAKey]) != "other roots" {
		t.Errorf("another bundle became %q", other.Data[model.CAKey])
	}
	for i := range maxSharedBundles + 1 {
		c.Compact(deliveredForTest("x", string(rune('a'+i))+" roots"))
	}
	if len(c.bundles) > maxSharedBundles {
		t.Errorf("%d bundles shared, more than the bound of %d", len(c.bundles), maxSharedBundles)
	}
}
