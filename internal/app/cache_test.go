package app

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcert/meshcert/internal/controller/dataplane"
	"github.com/meshcert/meshcert/internal/kuma"
)

func TestCompactSecrets(t *testing.T) {
	applied := map[string]string{corev1.LastAppliedConfigAnnotation: `{"data":{"tls.key":"c2VjcmV0"}}`}
	tests := map[string]struct {
		secret   *corev1.Secret
		wantData []string
		wantKeep bool // whether any annotation is kept
	}{
		"an Issuer's CA key pair is cached as its name and type": {
			secret: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "mesh-ca", Annotations: applied}, Type: corev1.SecretTypeTLS,
				Data: map[string][]byte{corev1.TLSCertKey: []byte("cert"), corev1.TLSPrivateKeyKey: []byte("key")}},
		},
		"an Opaque Secret is cached as its name and type": {
			secret: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "opaque"}, Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"value": []byte("x")}},
		},
		"a Kuma mesh Secret, a caCert, is cached whole but for kubectl's copy": {
			secret:   &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ca-cert", Annotations: applied}, Type: kuma.MeshSecretType, Data: map[string][]byte{"value": []byte("cert")}},
			wantData: []string{"value"},
		},
		"a delivered Secret is compacted, without its key": {
			secret: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{kuma.ManagedByLabel: kuma.ManagedByValue}}, Type: corev1.SecretTypeTLS,
				Data: map[string][]byte{corev1.TLSCertKey: []byte("cert"), corev1.TLSPrivateKeyKey: []byte("key")}},
			wantData: []string{corev1.TLSCertKey},
			wantKeep: true, // what the compactor found of the key
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			obj, err := compactSecrets(&dataplane.SecretCompactor{})(tc.secret)
			if err != nil {
				t.Fatal(err)
			}
			s := obj.(*corev1.Secret)
			if s.Name != tc.secret.Name || s.Type != tc.secret.Type {
				t.Errorf("cached as %s of type %s", s.Name, s.Type)
			}
			var keys []string
			for k := range s.Data {
				keys = append(keys, k)
			}
			if len(keys) != len(tc.wantData) || (len(keys) > 0 && keys[0] != tc.wantData[0]) {
				t.Errorf("cached data %v, want %v", keys, tc.wantData)
			}
			if _, ok := s.Annotations[corev1.LastAppliedConfigAnnotation]; ok {
				t.Error("kubectl's copy of the data was cached")
			}
			if got := len(s.Annotations) > 0; got != tc.wantKeep {
				t.Errorf("annotations %v", s.Annotations)
			}
		})
	}
}
