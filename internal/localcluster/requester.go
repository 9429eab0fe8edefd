package localcluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// StartRequesterIdentity serves and registers a mutating webhook that
// records on each new CertificateRequest who created it (spec.username,
// groups, uid and extra), as cert-manager's own webhook does; approvers such
// as approver-policy decide by that requester. cert-manager's webhook is a Go
// module of its own that the module proxy here does not serve, so this
// stands in for that one mutation. It serves until ctx ends.
func (c *Cluster) StartRequesterIdentity(ctx context.Context) error {
	cert, certPEM, err := selfSignedServing()
	if err != nil {
		return err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(recordRequester), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()

	url := fmt.Sprintf("https://%s/mutate", ln.Addr().(*net.TCPAddr).String())
	cfg := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "test-certificaterequest-identity"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "identity.test.meshcert.io",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: certPEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{"cert-manager.io"}, APIVersions: []string{"v1"}, Resources: []string{"certificaterequests"}}}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	if err := c.Client.Create(ctx, cfg); err != nil {
		return fmt.Errorf("registering the requester webhook: %w", err)
	}
	// The API server picks up a registration through a watch: wait until a
	// dry-run request comes back with its requester.
	deadline := time.Now().Add(30 * time.Second)
	for {
		probe := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "requester-probe-", Namespace: "default"},
			Spec:       cmapi.CertificateRequestSpec{Request: []byte("-"), IssuerRef: cmmeta.IssuerReference{Name: "none"}},
		}
		if err := c.Client.Create(ctx, probe, client.DryRunAll); err == nil && probe.Spec.Username != "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the requester webhook did not take effect within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recordRequester answers an AdmissionReview with the patch that sets the
// requester's identity, exactly the fields cert-manager sets.
func recordRequester(w http.ResponseWriter, r *http.Request) {
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	var obj struct {
		Spec struct {
			Extra map[string][]string `json:"extra"`
		} `json:"spec"`
	}
	_ = json.Unmarshal(review.Request.Object.Raw, &obj)
	user := review.Request.UserInfo
	patch := []map[string]any{
		{"op": "add", "path": "/spec/username", "value": user.Username},
		{"op": "add", "path": "/spec/uid", "value": user.UID},
		{"op": "add", "path": "/spec/groups", "value": user.Groups},
	}
	switch {
	case len(user.Extra) > 0:
		patch = append(patch, map[string]any{"op": "add", "path": "/spec/extra", "value": user.Extra})
	case obj.Spec.Extra != nil:
		patch = append(patch, map[string]any{"op": "remove", "path": "/spec/extra"})
	}
	raw, _ := json.Marshal(patch)
	review.Response = &admissionv1.AdmissionResponse{
		UID: review.Request.UID, Allowed: true, Patch: raw, PatchType: ptr.To(admissionv1.PatchTypeJSONPatch),
	}
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
}

// selfSignedServing makes a serving certificate for 127.0.0.1 that is its
// own CA bundle.
func selfSignedServing() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test requester webhook"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
