package issuance

import (
	"context"
	"errors"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshcert/meshcert/internal/testpki"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	namespace = "kong-mesh-system"
	timeout   = 10 * time.Second
)

// harness is an Issuer over a fake API server, whose requests a test signs,
// denies or leaves pending by hand, on a fake clock.
type harness struct {
	t      *testing.T
	client client.Client
	clock  *clocktesting.FakeClock
	issuer *Issuer
	turns  []string
}

func newHarness(t *testing.T, maxInFlight int) *harness {
	scheme := runtime.NewScheme()
	if err := cmapi.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clock: clocktesting.NewFakeClock(now)}
	h.client = fake.NewClientBuilder().WithScheme(scheme).WithIndex(&cmapi.CertificateRequest{}, OwnerIndex, ownerOf).Build()
	h.issuer = New(Options{
		Client: h.client, Namespace: namespace, Clock: h.clock, MaxInFlight: maxInFlight,
		OnTurn:  func(o Owner) { h.turns = append(h.turns, o.Name) },
		Backoff: NewBackoff(BackoffPolicy{Initial: 5 * time.Second, Max: time.Minute}),
	})
	return h
}

func request(owner string) Request {
	return Request{
		Owner: DataplaneOwner(types.NamespacedName{Namespace: "ns", Name: owner}), NamePrefix: "ns." + owner,
		URIs:         testpki.URLs("spiffe://demo/web", "kuma://kuma.io/service/web"),
		KeyAlgorithm: ECDSAP256,
		IssuerRef:    cmmeta.IssuerReference{Name: "ca", Kind: "Issuer", Group: "cert-manager.io"},
		Duration:     time.Hour, Timeout: timeout,
	}
}

// step steps req, delivering into *delivered.
func (h *harness) step(req Request, deliverErr error, delivered **Certificate) Outcome {
	h.t.Helper()
	out, err := h.issuer.Step(context.Background(), req, func(_ context.Context, c *Certificate) error {
		if deliverErr == nil && delivered != nil {
			*delivered = c
		}
		return deliverErr
	})
	if err != nil && !errors.Is(err, deliverErr) {
		h.t.Fatalf("Step: %v", err)
	}
	return out
}

func (h *harness) requests() []cmapi.CertificateRequest {
	h.t.Helper()
	var list cmapi.CertificateRequestList
	if err := h.client.List(context.Background(), &list); err != nil {
		h.t.Fatal(err)
	}
	return list.Items
}

// respond sets the status of the only request as a signer or approver would.
func (h *harness) respond(f func(cr *cmapi.CertificateRequest)) {
	h.t.Helper()
	crs := h.requests()
	if len(crs) != 1 {
		h.t.Fatalf("%d requests, want 1", len(crs))
	}
	cr := crs[0]
	f(&cr)
	if err := h.client.Update(context.Background(), &cr); err != nil {
		h.t.Fatal(err)
	}
}

func condition(typ cmapi.CertificateRequestConditionType, status cmmeta.ConditionStatus, reason, msg string) cmapi.CertificateRequestCondition {
	return cmapi.CertificateRequestCondition{Type: typ, Status: status, Reason: reason, Message: msg}
}

// sign issues the request's CSR from ca, with uris when given instead of the CSR's.
func sign(t *testing.T, ca testpki.CA, setCA bool, uris ...string) func(*cmapi.CertificateRequest) {
	return func(cr *cmapi.CertificateRequest) {
		csr, err := pki.DecodeX509CertificateRequestBytes(cr.Spec.Request)
		if err != nil {
			t.Fatal(err)
		}
		want := csr.URIs
		if uris != nil {
			want = testpki.URLs(uris...)
		}
		cr.Status.Certificate = ca.IssuePublic(t, csr.PublicKey, want, now.Add(-time.Minute), time.Hour)
		if setCA {
			cr.Status.CA = ca.PEM
		}
		cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", "", ""), condition("Ready", "True", "Issued", "")}
	}
}

func TestStep(t *testing.T) {
	ca, otherCA := testpki.NewCA(t, "ca", now), testpki.NewCA(t, "other", now)
	tests := map[string]struct {
		// roots is the request's Roots; nil trusts status.ca.
		roots      []byte
		respond    func(*cmapi.CertificateRequest)
		advance    time.Duration
		deliverErr error
		// wantReason is the failure's reason; "" wants a delivered certificate,
		// unless wantPending.
		wantReason  string
		wantPending bool
		wantRetry   time.Duration
		// wantRequests is how many requests are left.
		wantRequests int
	}{
		"issued, verified against status.ca, delivered and deleted": {respond: sign(t, ca, true)},
		"issued, verified against the given roots":                  {roots: ca.PEM, respond: sign(t, ca, false)},
		"still pending waits for the deadline": {
			respond:     func(*cmapi.CertificateRequest) {},
			advance:     4 * time.Second,
			wantPending: true, wantRetry: 6 * time.Second, wantRequests: 1,
		},
		"pending past the deadline times out and backs off": {
			respond: func(*cmapi.CertificateRequest) {}, advance: timeout,
			wantReason: ReasonTimeout, wantRetry: 5 * time.Second,
		},
		"denied": {
			respond: func(cr *cmapi.CertificateRequest) {
				cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Denied", "True", "Policy", "SAN not allowed"), condition("Ready", "False", "Denied", "")}
			},
			wantReason: "Denied", wantRetry: 5 * time.Second,
		},
		"failed": {
			respond: func(cr *cmapi.CertificateRequest) {
				cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Approved", "True", "", ""), condition("Ready", "False", "Failed", "signer down")}
			},
			wantReason: "Failed", wantRetry: 5 * time.Second,
		},
		"invalid": {
			respond: func(cr *cmapi.CertificateRequest) {
				cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("InvalidRequest", "True", "Bad", "bad CSR")}
			},
			wantReason: "InvalidRequest", wantRetry: 5 * time.Second,
		},
		"a certificate with other URIs is refused": {
			respond:    sign(t, ca, true, "spiffe://demo/admin"),
			wantReason: ReasonCertificateMismatch, wantRetry: 5 * time.Second,
		},
		"a certificate for another key is refused": {
			respond: func(cr *cmapi.CertificateRequest) {
				cr.Status.Certificate = ca.Issue(t, testpki.Key(t), testpki.URLs("spiffe://demo/web", "kuma://kuma.io/service/web"), now.Add(-time.Minute), time.Hour)
				cr.Status.CA = ca.PEM
				cr.Status.Conditions = []cmapi.CertificateRequestCondition{condition("Ready", "True", "Issued", "")}
			},
			wantReason: ReasonCertificateMismatch, wantRetry: 5 * time.Second,
		},
		"a certificate that does not chain to the roots is refused": {
			roots: otherCA.PEM, respond: sign(t, ca, true),
			wantReason: ReasonUntrustedCertificate, wantRetry: 5 * time.Second,
		},
		"no roots and no status.ca": {
			respond:    sign(t, ca, false),
			wantReason: ReasonMissingCA, wantRetry: 5 * time.Second,
		},
		"a delivery that fails for good ends the attempt": {
			respond: sign(t, ca, true), deliverErr: Failf("SecretConflict", "taken"),
			wantReason: "SecretConflict", wantRetry: 5 * time.Second,
		},
		"a delivery that may work later keeps the request": {
			respond: sign(t, ca, true), deliverErr: errors.New("API server down"),
			wantPending: true, wantRequests: 1,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, 0)
			req := request("web")
			req.Roots = tc.roots
			if out := h.step(req, nil, nil); out.RetryAfter != timeout || out.Certificate != nil || out.Failure != nil {
				t.Fatalf("first step = %+v, want a request created and a wait of %s", out, timeout)
			}
			h.respond(tc.respond)
			h.clock.Step(tc.advance)
			var delivered *Certificate
			out := h.step(req, tc.deliverErr, &delivered)

			switch {
			case tc.wantReason != "":
				if out.Failure == nil || out.Failure.Reason != tc.wantReason {
					t.Errorf("failure = %v, want reason %s", out.Failure, tc.wantReason)
				}
			case tc.wantPending:
				if out.Failure != nil || out.Certificate != nil {
					t.Errorf("outcome = %+v, want still pending", out)
				}
			default:
				if out.Failure != nil || out.Certificate == nil || delivered != out.Certificate {
					t.Fatalf("outcome = %+v, want a delivered certificate", out)
				}
				if ok, _ := pki.PublicKeyMatchesCertificate(delivered.Key.Public(), delivered.Leaf()); !ok || !delivered.Root.Equal(ca.Cert) {
					t.Error("the delivered certificate is not for its key, or names the wrong root")
				}
			}
			if tc.wantRetry != 0 && out.RetryAfter != tc.wantRetry {
				t.Errorf("RetryAfter = %s, want %s", out.RetryAfter, tc.wantRetry)
			}
			if got := len(h.requests()); got != tc.wantRequests {
				t.Errorf("%d requests left, want %d", got, tc.wantRequests)
			}
			if got, want := len(h.issuer.inFlight.byOwner), tc.wantRequests; got != want {
				t.Errorf("%d requests in flight, want %d", got, want)
			}
		})
	}
}

func TestStepBacksOffUntilTheCauseChanges(t *testing.T) {
	h := newHarness(t, 0)
	req := request("web")
	h.step(req, nil, nil)
	h.clock.Step(timeout)
	if out := h.step(req, nil, nil); out.Failure == nil || out.Failure.Reason != ReasonTimeout {
		t.Fatalf("outcome = %+v, want a timeout", out)
	}
	h.clock.Step(time.Second)
	if out := h.step(req, nil, nil); out.RetryAfter != 4*time.Second || len(h.requests()) != 0 {
		t.Fatalf("during the backoff: outcome %+v with %d requests, want a wait of 4s and no request", out, len(h.requests()))
	}
	req.Revision = "issuer changed"
	if out := h.step(req, nil, nil); out.RetryAfter != timeout || len(h.requests()) != 1 {
		t.Fatalf("after a change of revision: outcome %+v with %d requests, want a new request", out, len(h.requests()))
	}
}

func TestStepHoldsTheCapAndGivesTurns(t *testing.T) {
	ca := testpki.NewCA(t, "ca", now)
	h := newHarness(t, 1)
	a, b := request("a"), request("b")
	h.step(a, nil, nil)
	if out := h.step(b, nil, nil); out.RetryAfter != admitRetry || len(h.requests()) != 1 {
		t.Fatalf("b at the cap: outcome %+v with %d requests, want to wait its turn", out, len(h.requests()))
	}
	h.respond(sign(t, ca, true))
	if out := h.step(a, nil, nil); out.Certificate == nil {
		t.Fatalf("a: outcome %+v, want its certificate", out)
	}
	if len(h.turns) != 1 || h.turns[0] != "b" {
		t.Fatalf("turns %v, want b's", h.turns)
	}
	if out := h.step(b, nil, nil); out.RetryAfter != timeout || len(h.requests()) != 1 {
		t.Fatalf("b on its turn: outcome %+v with %d requests, want its request", out, len(h.requests()))
	}
}

func TestRequestNamesAndCleanup(t *testing.T) {
	h := newHarness(t, 0)
	req := request("web")
	if req.name() != request("web").name() {
		t.Error("request names are not deterministic")
	}
	renewal := req
	renewal.Replaces = "1234"
	if renewal.name() == req.name() {
		t.Error("a renewal reuses the request name")
	}
	h.step(req, nil, nil)
	// The identity changed: the old request goes, a new one comes.
	changed := req
	changed.URIs = testpki.URLs("spiffe://demo/api")
	h.step(changed, nil, nil)
	crs := h.requests()
	if len(crs) != 1 || crs[0].Name != changed.name() {
		t.Fatalf("requests %v, want only %s", crs, changed.name())
	}
	if err := h.issuer.Cleanup(context.Background(), request("web").Owner); err != nil {
		t.Fatal(err)
	}
	if len(h.requests()) != 0 || len(h.issuer.inFlight.byOwner) != 0 {
		t.Error("Cleanup left a request")
	}
}
