package trust

import (
	"context"
	"crypto/x509"
	"net/url"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/meshcert/meshcert/internal/issuance"
)

// probePath is the path of a probe certificate's SPIFFE ID, in the trust
// domain the probe names.
const probePath = "/meshcert-probe"

// probeDuration is a probe certificate's lifetime: it is never used.
const probeDuration = time.Hour

// Prober learns an issuer's root with a probe: a short-lived certificate,
// issued like any other through package issuance, whose root is remembered in
// a Store and whose key is thrown away. It is how meshcert learns the root of
// an issuer that names no CA certificate and issued nothing yet.
type Prober struct {
	issuer *issuance.Issuer
	roots  *Store
	clock  clock.PassiveClock
}

// NewProber returns a Prober that asks issuer and remembers in roots.
func NewProber(issuer *issuance.Issuer, roots *Store, clock clock.PassiveClock) *Prober {
	return &Prober{issuer: issuer, roots: roots, clock: clock}
}

// Probe is one issuer's probe, and where its root is remembered.
type Probe struct {
	// Key is what the root is remembered under.
	Key BackendKey
	// Owner, NamePrefix, Labels and Annotations are the probe's request's,
	// as issuance.Request has them.
	Owner      issuance.Owner
	NamePrefix string
	// TrustDomain is the host of the probe's SPIFFE ID: one that an approval
	// policy admits for the issuer's certificates admits its probe too.
	TrustDomain  string
	KeyAlgorithm issuance.KeyAlgorithm
	IssuerRef    cmmeta.IssuerReference
	Timeout      time.Duration
	// Revision is anything else the probe depends on, such as the issuer's
	// resourceVersion: a change ends its backoff.
	Revision            string
	Labels, Annotations map[string]string
}

// ProbeOutcome is what a step of a probe came to.
type ProbeOutcome struct {
	// Root is set once the probe learned it; News says it is not what the
	// store held.
	Root *x509.Certificate
	News bool
	// Failure is set when the probe failed; the store holds when to retry.
	Failure *issuance.Failure
	// RetryAfter is when to step again, unless the request's watch comes
	// first.
	RetryAfter time.Duration
}

// Done says the probe has ended, learning the root or failing to.
func (o ProbeOutcome) Done() bool { return o.Root != nil || o.Failure != nil }

// Step drives a probe one step, as issuance.Issuer.Step does a request.
func (p *Prober) Step(ctx context.Context, probe Probe) (ProbeOutcome, error) {
	req := issuance.Request{
		Owner:        probe.Owner,
		NamePrefix:   probe.NamePrefix,
		URIs:         []*url.URL{{Scheme: "spiffe", Host: probe.TrustDomain, Path: probePath}},
		KeyAlgorithm: probe.KeyAlgorithm,
		IssuerRef:    probe.IssuerRef,
		Duration:     probeDuration,
		Timeout:      probe.Timeout,
		Revision:     probe.Revision,
		Labels:       probe.Labels,
		Annotations:  probe.Annotations,
	}
	// The root is learned as the certificate is delivered, before its
	// request is deleted: that deletion is what wakes whoever waits for the
	// root, and they must find it then.
	var news bool
	out, err := p.issuer.Step(ctx, req, func(_ context.Context, c *issuance.Certificate) error {
		news = p.roots.Learn(probe.Key, p.clock.Now(), c.Root)
		return nil
	})
	switch {
	case err != nil:
		return ProbeOutcome{}, err
	case out.Certificate != nil:
		return ProbeOutcome{Root: out.Certificate.Root, News: news}, nil
	case out.Failure != nil:
		p.roots.Fail(probe.Key, p.clock.Now().Add(out.RetryAfter))
		return ProbeOutcome{Failure: out.Failure, RetryAfter: out.RetryAfter}, nil
	}
	return ProbeOutcome{RetryAfter: out.RetryAfter}, nil
}

// Cleanup ends an owner's probe: it is done, or no longer wanted.
func (p *Prober) Cleanup(ctx context.Context, owner issuance.Owner) error {
	return p.issuer.Cleanup(ctx, owner)
}
