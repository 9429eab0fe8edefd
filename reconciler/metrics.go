package reconciler

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	issuedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshcert_certificates_issued_total",
		Help: "Dataplane certificates issued and delivered, by mesh and backend.",
	}, []string{"mesh", "backend"})
	failuresTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshcert_issuance_failures_total",
		Help: "Failed issuance attempts, by reason (Denied, Failed, InvalidRequest, Timeout, MissingCA, ...).",
	}, []string{"reason"})
	issuanceSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "meshcert_issuance_duration_seconds",
		Help:    "Time from creating a CertificateRequest to delivering its certificate.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14), // 10ms to ~80s
	})
	inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshcert_certificate_requests_in_flight",
		Help: "CertificateRequests created and not yet finished.",
	})
)

func init() {
	metrics.Registry.MustRegister(issuedTotal, failuresTotal, issuanceSeconds, inFlight)
}

// inventory is what meshcert knows of each delivered certificate, for the
// gauges computed at scrape time.
type inventory struct {
	mu    sync.Mutex
	certs map[types.NamespacedName]certInfo
	now   func() time.Time
}

type certInfo struct {
	mesh, backend string
	notAfter      time.Time
}

func newInventory(now func() time.Time) *inventory {
	return &inventory{certs: map[types.NamespacedName]certInfo{}, now: now}
}

func (i *inventory) set(key types.NamespacedName, info certInfo) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.certs[key] = info
}

// countOthers counts a mesh's certificates from backends other than backend.
func (i *inventory) countOthers(mesh, backend string) int {
	i.mu.Lock()
	defer i.mu.Unlock()
	n := 0
	for _, c := range i.certs {
		if c.mesh == mesh && c.backend != backend {
			n++
		}
	}
	return n
}

func (i *inventory) delete(key types.NamespacedName) {
	i.mu.Lock()
	defer i.mu.Unlock()
	delete(i.certs, key)
}

var (
	expiringDesc = prometheus.NewDesc("meshcert_certificates_expiring_soon",
		"Delivered dataplane certificates that expire within an hour.", nil, nil)
	perBackendDesc = prometheus.NewDesc("meshcert_certificates",
		"Delivered dataplane certificates, by mesh and issuing backend.", []string{"mesh", "backend"}, nil)
)

// Describe implements prometheus.Collector.
func (i *inventory) Describe(ch chan<- *prometheus.Desc) {
	ch <- expiringDesc
	ch <- perBackendDesc
}

// Collect implements prometheus.Collector.
func (i *inventory) Collect(ch chan<- prometheus.Metric) {
	i.mu.Lock()
	defer i.mu.Unlock()
	soon := i.now().Add(time.Hour)
	expiring := 0
	perBackend := map[[2]string]int{}
	for _, c := range i.certs {
		if c.notAfter.Before(soon) {
			expiring++
		}
		perBackend[[2]string{c.mesh, c.backend}]++
	}
	ch <- prometheus.MustNewConstMetric(expiringDesc, prometheus.GaugeValue, float64(expiring))
	for k, n := range perBackend {
		ch <- prometheus.MustNewConstMetric(perBackendDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}

// certInventory is the process's inventory; its gauges are read at scrape time.
var certInventory = newInventory(time.Now)

func init() {
	metrics.Registry.MustRegister(certInventory)
}
