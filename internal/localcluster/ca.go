package localcluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CA is a self-signed CA key pair made for a test cluster.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA makes a self-signed ECDSA P-256 root CA, valid for ten years.
func NewCA(commonName string) (*CA, error) {
	return NewCAValidFrom(commonName, time.Now().Add(-time.Hour))
}

// NewCAValidFrom makes a root CA that is valid for ten years from notBefore.
func NewCAValidFrom(commonName string, notBefore time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// EnsureNamespace creates a namespace unless it exists.
func EnsureNamespace(ctx context.Context, c client.Client, name string) error {
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// CAIssuer names a CA issuer to create: an Issuer in Namespace, or a
// ClusterIssuer when Namespace is empty (its Secret then lives in the
// cluster resource namespace, SecretNamespace).
type CAIssuer struct {
	Name            string
	Namespace       string
	SecretName      string
	SecretNamespace string
	CA              *CA
}

// CreateCAIssuers creates each CA issuer, then waits until cert-manager marks
// every one Ready.
func CreateCAIssuers(ctx context.Context, c client.Client, issuers []CAIssuer) error {
	for _, iss := range issuers {
		if err := createCAIssuer(ctx, c, iss); err != nil {
			return err
		}
	}
	for _, iss := range issuers {
		if err := waitIssuerReady(ctx, c, iss); err != nil {
			return fmt.Errorf("waiting for issuer %s to be Ready: %w", iss.Name, err)
		}
	}
	return nil
}

// createCAIssuer stores the CA key pair in a Secret and creates a cert-manager
// CA Issuer or ClusterIssuer for it.
func createCAIssuer(ctx context.Context, c client.Client, iss CAIssuer) error {
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      iss.SecretName,
			Namespace: iss.SecretNamespace,
			// cert-manager caches only labelled Secrets; without the label it
			// fetches the key pair live on every signature.
			Labels: map[string]string{"controller.cert-manager.io/fao": "true"},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       iss.CA.CertPEM,
			corev1.TLSPrivateKeyKey: iss.CA.KeyPEM,
			"ca.crt":                iss.CA.CertPEM,
		},
	}
	if err := c.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the CA Secret %s/%s: %w", iss.SecretNamespace, iss.SecretName, err)
	}
	spec := cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: iss.SecretName}}}
	var obj client.Object
	if iss.Namespace == "" {
		obj = &cmapi.ClusterIssuer{ObjectMeta: metav1.ObjectMeta{Name: iss.Name}, Spec: spec}
	} else {
		obj = &cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Name: iss.Name, Namespace: iss.Namespace}, Spec: spec}
	}
	if err := c.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the CA issuer %s: %w", iss.Name, err)
	}
	return nil
}

// waitIssuerReady waits until cert-manager marks the issuer Ready.
func waitIssuerReady(ctx context.Context, c client.Client, iss CAIssuer) error {
	return wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var status cmapi.IssuerStatus
		if iss.Namespace == "" {
			var ci cmapi.ClusterIssuer
			if err := c.Get(ctx, client.ObjectKey{Name: iss.Name}, &ci); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			status = ci.Status
		} else {
			var i cmapi.Issuer
			if err := c.Get(ctx, client.ObjectKey{Namespace: iss.Namespace, Name: iss.Name}, &i); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			status = i.Status
		}
		for _, cond := range status.Conditions {
			if cond.Type == cmapi.IssuerConditionReady && cond.Status == cmmeta.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// Sign signs a PEM CSR with the CA, as cert-manager's CA issuer would.
func (ca *CA) Sign(csrPEM []byte, duration time.Duration) ([]byte, error) {
	tmpl, err := pki.CertificateTemplateFromCSRPEM(csrPEM, pki.CertificateTemplateOverrideDuration(duration))
	if err != nil {
		return nil, err
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)); err != nil {
		return nil, err
	}
	key, err := pki.DecodePrivateKeyBytes(ca.KeyPEM)
	if err != nil {
		return nil, err
	}
	pem, _, err := pki.SignCertificate(tmpl, ca.Cert, tmpl.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return pem, nil
}
