package localcluster

import (
	"context"
	"fmt"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/meshcert/meshcert/internal/testpki"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

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
	CA              *testpki.CA
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
			corev1.TLSCertKey:       iss.CA.PEM,
			corev1.TLSPrivateKeyKey: iss.CA.KeyPEM,
			"ca.crt":                iss.CA.PEM,
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
