package trust

import (
	"context"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/runtime"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/testpki"
)

// indexer registers an index with a fake client's builder.
type indexer struct{ b *fake.ClientBuilder }

func (i indexer) IndexField(_ context.Context, obj client.Object, field string, f client.IndexerFunc) error {
	i.b.WithIndex(obj, field, f)
	return nil
}

func TestProberStep(t *testing.T) {
	ca := testpki.NewCA(t, "ca", now)
	key := BackendKey{Mesh: "demo", Backend: "next", Config: "c1"}
	probe := Probe{
		Key: key, Owner: issuance.ProbeOwner("demo", "next"), NamePrefix: "probe.demo.next", TrustDomain: "demo",
		KeyAlgorithm: issuance.ECDSAP256,
		IssuerRef:    cmmeta.IssuerReference{Name: "ca", Kind: "Issuer", Group: "cert-manager.io"},
		Timeout:      10 * time.Second,
		Labels:       map[string]string{"meshcert.io/probe": "true"},
		Annotations:  map[string]string{"meshcert.io/mesh": "demo"},
	}
	condition := func(typ cmapi.CertificateRequestConditionType, status cmmeta.ConditionStatus, reason string) cmapi.CertificateRequestCondition {
		return cmapi.CertificateRequestCondition{Type: typ, Status: status, Reason: reason, Message: reason}
	}
	tests := map[string]struct {
		// respond sets the probe's request's status; nil leaves it pending.
		respond func(t *testing.T, cr *cmapi.CertificateRequest)
		advance time.Duration
		want    ProbeOutcome
		// wantKnown says the store holds the root afterwards; wantRetryAt
		// that it holds a failure, retried then.
		wantKnown   bool
		wantRetryAt time.Time
	}{
		"issued: the root is learned, and the request deleted": {
			respond: func(t *testing.T, cr *cmapi.CertificateRequest) {
				csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
				if err != nil {
					t.Fatal(err)
				}
				cr.Status.Certificate = ca.IssuePublic(t, csr.PublicKey, csr.URIs, now.Add(-time.Minute), time.Hour)
				cr.Status.CA = ca.PEM
				cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", ""), condition("Ready", "True", "Issued")}
			},
			want:      ProbeOutcome{Root: ca.Cert, News: true},
			wantKnown: true,
		},
		"denied: the probe fails and is retried after the backoff": {
			respond: func(_ *testing.T, cr *cmapi.CertificateRequest) {
				cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Denied", "True", "Policy"), condition("Ready", "False", "Denied")}
			},
			want:        ProbeOutcome{Failure: &issuance.Failure{Reason: "Denied"}, RetryAfter: 5 * time.Second},
			wantRetryAt: now.Add(5 * time.Second),
		},
		"pending: wait for the deadline": {
			advance: 4 * time.Second,
			want:    ProbeOutcome{RetryAfter: 6 * time.Second},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			scheme := runtime.NewScheme()
			if err := cmapi.AddToScheme(scheme); err != nil {
				t.Fatal(err)
			}
			b := fake.NewClientBuilder().WithScheme(scheme)
			if err := issuance.IndexRequests(ctx, indexer{b}); err != nil {
				t.Fatal(err)
			}
			c := b.Build()
			clock := clocktesting.NewFakeClock(now)
			issuer := issuance.New(issuance.Options{Client: c, Namespace: "kong-mesh-system", Clock: clock,
				Backoff: issuance.NewBackoff(issuance.BackoffPolicy{Initial: 5 * time.Second, Max: time.Minute})})
			store := NewStore()
			prober := NewProber(issuer, store, clock)

			if out, err := prober.Step(ctx, probe); err != nil || out.Done() {
				t.Fatalf("first Step = %+v, %v; want a request made", out, err)
			}
			var list cmapi.CertificateRequestList
			if err := c.List(ctx, &list); err != nil || len(list.Items) != 1 {
				t.Fatalf("%d requests (%v), want 1", len(list.Items), err)
			}
			cr := list.Items[0]
			csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
			if err != nil {
				t.Fatal(err)
			}
			if got := pki.URLsToString(csr.URIs); !cmp.Equal(got, []string{"spiffe://demo/meshcert-probe"}) {
				t.Errorf("the probe asks for %v, want spiffe://demo/meshcert-probe", got)
			}
			if cr.Labels["meshcert.io/probe"] != "true" || cr.Annotations["meshcert.io/mesh"] != "demo" || cr.Annotations[issuance.OwnerAnnotation] != "Probe:demo/next" {
				t.Errorf("the request lacks the probe's labels or annotations: %v, %v", cr.Labels, cr.Annotations)
			}
			if d := cr.Spec.Duration; d == nil || d.Duration != time.Hour {
				t.Errorf("the probe's duration is %v, want 1h", d)
			}
			if tc.respond != nil {
				tc.respond(t, &cr)
				if err := c.Update(ctx, &cr); err != nil {
					t.Fatal(err)
				}
			}
			clock.Step(tc.advance)

			got, err := prober.Step(ctx, probe)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b *issuance.Failure) bool {
				return (a == nil) == (b == nil) && (a == nil || a.Reason == b.Reason)
			})); diff != "" {
				t.Errorf("Step (-want +got):\n%s", diff)
			}
			if _, _, known := store.Roots(key); known != tc.wantKnown {
				t.Errorf("the store knows the root: %t, want %t", known, tc.wantKnown)
			}
			if at, _ := store.RetryAt(key); !at.Equal(tc.wantRetryAt) {
				t.Errorf("the store retries at %s, want %s", at, tc.wantRetryAt)
			}
			if err := c.List(ctx, &list); err != nil {
				t.Fatal(err)
			}
			if wantLeft := !got.Done(); (len(list.Items) == 1) != wantLeft {
				t.Errorf("%d requests left; want one only while the probe is under way", len(list.Items))
			}
		})
	}
}
