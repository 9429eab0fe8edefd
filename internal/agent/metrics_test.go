package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/peer"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/agent/attest"
	"github.com/meshcert/meshcert/internal/controller/controllertest"
	"github.com/meshcert/meshcert/internal/kuma"
)

// issuanceCounts reads meshcert_agent_svid_issuances_total, by kind/result.
func issuanceCounts() map[string]float64 {
	counts := map[string]float64{}
	for _, kind := range []string{issuanceFirst, issuanceRenewal} {
		for _, result := range []string{resultSuccess, resultFailure} {
			counts[kind+"/"+result] = testutil.ToFloat64(svidIssuances.WithLabelValues(kind, result))
		}
	}
	return counts
}

func TestSVIDMetrics(t *testing.T) {
	tests := map[string]struct {
		steps func(h *svidsHarness)
		// wantExpiry is the served certificate's expiry series, empty for none.
		wantExpiry string
		wantCounts map[string]float64
	}{
		"an issued identity's expiry, and a first success": {
			steps: func(h *svidsHarness) { h.issued() },
			wantExpiry: `
# HELP meshcert_agent_svid_expiration_timestamp_seconds When the certificate the agent serves for an identity expires, in seconds since the epoch, by mesh and SPIFFE ID.
# TYPE meshcert_agent_svid_expiration_timestamp_seconds gauge
meshcert_agent_svid_expiration_timestamp_seconds{mesh="payments",spiffe_id="spiffe://payments.example.com/ns/pay/sa/web"} 1.78031874e+09
`,
			wantCounts: map[string]float64{"first/success": 1},
		},
		"a first request denied": {
			steps: func(h *svidsHarness) {
				h.want()
				h.reconcile()
				h.Respond(controllertest.Denied)
				h.reconcile()
			},
			wantCounts: map[string]float64{"first/failure": 1},
		},
		"a renewal denied keeps the old expiry": {
			steps: func(h *svidsHarness) {
				h.renewalDenied()
				h.reconcile()
			},
			wantExpiry: `
# HELP meshcert_agent_svid_expiration_timestamp_seconds When the certificate the agent serves for an identity expires, in seconds since the epoch, by mesh and SPIFFE ID.
# TYPE meshcert_agent_svid_expiration_timestamp_seconds gauge
meshcert_agent_svid_expiration_timestamp_seconds{mesh="payments",spiffe_id="spiffe://payments.example.com/ns/pay/sa/web"} 1.78031874e+09
`,
			wantCounts: map[string]float64{"first/success": 1, "renewal/failure": 1},
		},
		"a renewal signed moves the expiry": {
			steps: func(h *svidsHarness) {
				h.renewalRequested()
				h.Respond(controllertest.SignedBy(h.ca, svidLifetime))
				h.reconcile()
			},
			wantExpiry: `
# HELP meshcert_agent_svid_expiration_timestamp_seconds When the certificate the agent serves for an identity expires, in seconds since the epoch, by mesh and SPIFFE ID.
# TYPE meshcert_agent_svid_expiration_timestamp_seconds gauge
meshcert_agent_svid_expiration_timestamp_seconds{mesh="payments",spiffe_id="spiffe://payments.example.com/ns/pay/sa/web"} 1.780321742e+09
`,
			wantCounts: map[string]float64{"first/success": 1, "renewal/success": 1},
		},
		"an identity dropped leaves no series": {
			steps: func(h *svidsHarness) {
				h.issued()
				h.release()
				h.Clock.Step(idleGrace)
				h.reconcile()
			},
			wantCounts: map[string]float64{"first/success": 1},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			svidExpiry.Reset()
			before := issuanceCounts()
			h := newSVIDsHarness(t)
			tc.steps(h)
			if err := testutil.CollectAndCompare(svidExpiry, strings.NewReader(tc.wantExpiry)); err != nil {
				t.Error(err)
			}
			for k, n := range issuanceCounts() {
				if got := n - before[k]; got != tc.wantCounts[k] {
					t.Errorf("issuances %s: %v more, want %v", k, got, tc.wantCounts[k])
				}
			}
		})
	}
}

func TestCallersRefused(t *testing.T) {
	caller := attest.Caller{PID: 42, UID: 1000}
	callCtx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: callerInfo{Caller: caller}})
	attested := func(err error) *Server {
		return &Server{Log: logr.Discard(), Limits: testLimits, Resolver: &Resolver{
			Attestor: attestorFunc(func(context.Context, attest.Caller) (*kuma.DataplaneResource, client.Object, error) {
				return nil, nil, err
			}),
		}}
	}
	tests := map[string]struct {
		refuse func(t *testing.T)
		want   string
	}{
		"a caller without an identity": {
			refuse: func(t *testing.T) {
				if _, err := attested(notEntitled("pod pay/web has no Dataplane")).identityOf(callCtx); err == nil {
					t.Error("not refused")
				}
			},
			want: refusedNotEntitled,
		},
		"a caller the agent cannot attest": {
			refuse: func(t *testing.T) {
				if _, err := attested(errors.New("the API server is away")).identityOf(callCtx); err == nil {
					t.Error("not refused")
				}
			},
			want: refusedNotAttested,
		},
		"a request of too many names": {
			refuse: func(t *testing.T) {
				d := &sds{s: &Server{Limits: Limits{MaxResourceNames: 1}}}
				if _, err := d.requestedNames(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"a", "b"}}); err == nil {
					t.Error("not refused")
				}
			},
			want: refusedTooManyNames,
		},
		"one call over the caller's limit": {
			refuse: func(t *testing.T) {
				calls := &openCounts{what: "call", refusal: refusedTooManyCalls, limit: 1, callerOf: ByProcess, open: map[string]int{}, log: logr.Discard()}
				if _, ok := calls.begin(caller); !ok {
					t.Fatal("the first call refused")
				}
				if _, ok := calls.begin(caller); ok {
					t.Error("not refused")
				}
			},
			want: refusedTooManyCalls,
		},
		"one connection over the limit": {
			refuse: func(t *testing.T) {
				conns := &openCounts{what: "connection", refusal: refusedTooManyConns, limit: 5, total: 1, callerOf: ByProcess, open: map[string]int{}, log: logr.Discard()}
				if _, ok := conns.begin(caller); !ok {
					t.Fatal("the first connection refused")
				}
				if _, ok := conns.begin(attest.Caller{PID: 43}); ok {
					t.Error("not refused")
				}
			},
			want: refusedTooManyConns,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := map[string]float64{}
			for _, r := range refusalReasons {
				before[r] = testutil.ToFloat64(callersRefused.WithLabelValues(r))
			}
			tc.refuse(t)
			for _, r := range refusalReasons {
				want := 0.0
				if r == tc.want {
					want = 1
				}
				if got := testutil.ToFloat64(callersRefused.WithLabelValues(r)) - before[r]; got != want {
					t.Errorf("refusals %s: %v more, want %v", r, got, want)
				}
			}
		})
	}
}

// TestRefusalReasonsAreFixed: the reasons' series exist from the start, and
// no other.
func TestRefusalReasonsAreFixed(t *testing.T) {
	if got, want := testutil.CollectAndCount(callersRefused), len(refusalReasons); got != want {
		t.Errorf("%d series of meshcert_agent_callers_refused_total, want %d", got, want)
	}
}
