package lookup

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/internal/kuma"
)

// Inventory counts the certificates meshcert delivered, by mesh and issuing
// backend, from the annotations of the Secrets it wrote. It is the one record
// of them: the webhook warns from it before a backend that still issues is
// removed, the reconciler sizes a backend switch with it, and its gauges are
// read from it at scrape time.
type Inventory struct {
	mu    sync.Mutex
	certs map[types.UID]certificate
	// perBackend counts certs by mesh and backend.
	perBackend map[meshBackend]int
	now        func() time.Time
}

type meshBackend struct{ mesh, backend string }

type certificate struct {
	meshBackend
	notAfter time.Time
}

func newInventory() *Inventory {
	return &Inventory{certs: map[types.UID]certificate{}, perBackend: map[meshBackend]int{}, now: time.Now}
}

// onSecret records a delivered Secret, or forgets one that is gone or no
// longer meshcert's.
func (i *Inventory) onSecret(s *corev1.Secret, gone bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if old, ok := i.certs[s.UID]; ok {
		i.perBackend[old.meshBackend]--
		if i.perBackend[old.meshBackend] <= 0 {
			delete(i.perBackend, old.meshBackend)
		}
		delete(i.certs, s.UID)
	}
	if gone {
		return
	}
	c := certificate{meshBackend: meshBackend{s.Annotations[kuma.MeshAnnotation], s.Annotations[kuma.BackendAnnotation]}}
	c.notAfter, _ = time.Parse(time.RFC3339, s.Annotations[kuma.NotAfterAnnotation])
	i.certs[s.UID] = c
	i.perBackend[c.meshBackend]++
}

func (i *Inventory) count(mesh, backend string) int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.perBackend[meshBackend{mesh, backend}]
}

// CountOthers counts a mesh's certificates from backends other than backend.
func (i *Inventory) CountOthers(mesh, backend string) int {
	i.mu.Lock()
	defer i.mu.Unlock()
	n := 0
	for k, c := range i.perBackend {
		if k.mesh == mesh && k.backend != backend {
			n += c
		}
	}
	return n
}

var (
	expiringDesc = prometheus.NewDesc("meshcert_certificates_expiring_soon",
		"Delivered dataplane certificates that expire within an hour.", nil, nil)
	perBackendDesc = prometheus.NewDesc("meshcert_certificates",
		"Delivered dataplane certificates, by mesh and issuing backend.", []string{"mesh", "backend"}, nil)
	// Per backend, not per dataplane: a mesh of ten thousand dataplanes is
	// ten thousand series per dataplane metric, and an alert wants the
	// earliest anyway.
	earliestDesc = prometheus.NewDesc("meshcert_certificates_earliest_expiration_timestamp_seconds",
		"When the first of the delivered dataplane certificates expires, in seconds since the epoch, by mesh and issuing backend.", []string{"mesh", "backend"}, nil)
)

// Describe implements prometheus.Collector.
func (i *Inventory) Describe(ch chan<- *prometheus.Desc) {
	ch <- expiringDesc
	ch <- perBackendDesc
	ch <- earliestDesc
}

// Collect implements prometheus.Collector.
func (i *Inventory) Collect(ch chan<- prometheus.Metric) {
	i.mu.Lock()
	defer i.mu.Unlock()
	soon := i.now().Add(time.Hour)
	expiring := 0
	earliest := map[meshBackend]time.Time{}
	for _, c := range i.certs {
		if c.notAfter.Before(soon) {
			expiring++
		}
		// A certificate without a readable notAfter is left out.
		if first, ok := earliest[c.meshBackend]; !c.notAfter.IsZero() && (!ok || c.notAfter.Before(first)) {
			earliest[c.meshBackend] = c.notAfter
		}
	}
	ch <- prometheus.MustNewConstMetric(expiringDesc, prometheus.GaugeValue, float64(expiring))
	for k, t := range earliest {
		ch <- prometheus.MustNewConstMetric(earliestDesc, prometheus.GaugeValue, float64(t.Unix()), k.mesh, k.backend)
	}
	for k, n := range i.perBackend {
		ch <- prometheus.MustNewConstMetric(perBackendDesc, prometheus.GaugeValue, float64(n), k.mesh, k.backend)
	}
}
