package lookup

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/internal/kuma"
)

func TestInventory(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	secret := func(uid, backend string, notAfter time.Time) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Annotations: map[string]string{
			kuma.MeshAnnotation: "demo", kuma.BackendAnnotation: backend, kuma.NotAfterAnnotation: notAfter.Format(time.RFC3339),
		}}}
	}
	type event struct {
		secret *corev1.Secret
		gone   bool
	}
	tests := map[string]struct {
		events []event
		// want counts by backend of mesh demo; wantOthers counts those not of ca-2.
		want       map[string]int
		wantOthers int
		wantSoon   int
		// wantEarliest is the first expiry of each backend of mesh demo.
		wantEarliest map[string]time.Time
	}{
		"each Secret once": {
			events:     []event{{secret: secret("a", "ca-1", now.Add(24*time.Hour))}, {secret: secret("b", "ca-1", now.Add(30*time.Minute))}, {secret: secret("c", "ca-2", now.Add(24*time.Hour))}},
			want:       map[string]int{"ca-1": 2, "ca-2": 1},
			wantOthers: 2, wantSoon: 1,
			wantEarliest: map[string]time.Time{"ca-1": now.Add(30 * time.Minute), "ca-2": now.Add(24 * time.Hour)},
		},
		"an update moves a Secret to its new backend": {
			events:       []event{{secret: secret("a", "ca-1", now.Add(24*time.Hour))}, {secret: secret("a", "ca-2", now.Add(24*time.Hour))}},
			want:         map[string]int{"ca-1": 0, "ca-2": 1},
			wantOthers:   0,
			wantEarliest: map[string]time.Time{"ca-2": now.Add(24 * time.Hour)},
		},
		"a Secret gone is forgotten": {
			events: []event{{secret: secret("a", "ca-1", now.Add(24*time.Hour))}, {secret: secret("a", "ca-1", now), gone: true}},
			want:   map[string]int{"ca-1": 0},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			inv := newInventory()
			inv.now = func() time.Time { return now }
			for _, e := range tc.events {
				inv.onSecret(e.secret, e.gone)
			}
			for backend, n := range tc.want {
				if got := inv.count("demo", backend); got != n {
					t.Errorf("count(demo, %s) = %d, want %d", backend, got, n)
				}
			}
			if got := inv.CountOthers("demo", "ca-2"); got != tc.wantOthers {
				t.Errorf("CountOthers(demo, ca-2) = %d, want %d", got, tc.wantOthers)
			}
			want := "# HELP meshcert_certificates_expiring_soon Delivered dataplane certificates that expire within an hour.\n" +
				"# TYPE meshcert_certificates_expiring_soon gauge\n" +
				"meshcert_certificates_expiring_soon " + strconv.Itoa(tc.wantSoon) + "\n"
			if err := testutil.CollectAndCompare(inv, strings.NewReader(want), "meshcert_certificates_expiring_soon"); err != nil {
				t.Error(err)
			}
			want = ""
			if len(tc.wantEarliest) > 0 {
				want = "# HELP meshcert_certificates_earliest_expiration_timestamp_seconds When the first of the delivered dataplane certificates expires, in seconds since the epoch, by mesh and issuing backend.\n" +
					"# TYPE meshcert_certificates_earliest_expiration_timestamp_seconds gauge\n"
			}
			for backend, at := range tc.wantEarliest {
				want += `meshcert_certificates_earliest_expiration_timestamp_seconds{backend="` + backend + `",mesh="demo"} ` + strconv.FormatInt(at.Unix(), 10) + "\n"
			}
			if err := testutil.CollectAndCompare(inv, strings.NewReader(want), "meshcert_certificates_earliest_expiration_timestamp_seconds"); err != nil {
				t.Error(err)
			}
		})
	}
}
