package lookup

import (
	"crypto/x509"
	"fmt"

	"github.com/cert-manager/cert-manager/pkg/util/pki"

	"github.com/meshcert/meshcert/internal/kuma"
)

// CACert is a caCert data source, resolved.
type CACert struct {
	// Source is the data source's field that was read: "secret", "inline" or
	// "inlineString"; empty for a file, which only the control plane can read.
	Source string
	// PEM is the material it names; nil when it could not be read.
	PEM []byte
	// Unresolved is why the material could not be read at all.
	Unresolved *Problem
	// Problems reject the material; Warnings do not.
	Problems, Warnings []string
}

// OK tells whether the material was read and has no problems.
func (c CACert) OK() bool { return c.Unresolved == nil && len(c.Problems) == 0 }

// Roots parses the material's certificates; nil unless OK.
func (c CACert) Roots() []*x509.Certificate {
	if !c.OK() || c.PEM == nil {
		return nil
	}
	certs, _ := pki.DecodeX509CertificateSetBytes(c.PEM)
	return certs
}

// ResolveCACert reads the CA material a data source names for mesh, as Kuma
// does, and checks it.
func ResolveCACert(mesh string, ds kuma.DataSource, env Env) CACert {
	var c CACert
	switch {
	case ds.Secret != nil:
		c.Source = "secret"
		secret, problem := MeshSecret(mesh, *ds.Secret, env)
		if problem != nil {
			c.Unresolved = problem
			return c
		}
		c.PEM = secret.Data[kuma.SecretValueKey]
		if len(c.PEM) == 0 {
			c.PEM = nil
			c.Unresolved = &Problem{Type: Invalid, Value: *ds.Secret,
				Message: fmt.Sprintf("Secret %s/%s has no data.%s", env.SystemNamespace, *ds.Secret, kuma.SecretValueKey)}
			return c
		}
	case ds.HasInline:
		c.Source, c.PEM = "inline", ds.Inline
	case ds.InlineString != nil:
		c.Source, c.PEM = "inlineString", []byte(*ds.InlineString)
	default:
		return c
	}
	c.Problems, c.Warnings = CAProblems(c.PEM, env.Now)
	return c
}
