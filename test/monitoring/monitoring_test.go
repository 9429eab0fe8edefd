// Package monitoring tests what the chart gives Prometheus and Grafana:
// the PrometheusRule's alerts, with promtool on synthetic series, and the
// dashboard's queries, against the metrics meshcert exports.
package monitoring

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	// Imported for the metrics they register.
	_ "github.com/meshcert/meshcert/internal/agent"
	_ "github.com/meshcert/meshcert/internal/controller/dataplane"
	_ "github.com/meshcert/meshcert/internal/controller/meshidentity"
	_ "github.com/meshcert/meshcert/internal/issuance"
	"github.com/meshcert/meshcert/internal/lookup"
	"github.com/meshcert/meshcert/test/chart"
)

// promtool is Prometheus's rule checker: Debian's prometheus package has it.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is missing: install it with `apt-get install -y prometheus` (hack/packages.sh does, as root)")
	}
	return path
}

// rulesFile renders the chart's PrometheusRule, agent on, and writes its
// groups as a Prometheus rule file in dir.
func rulesFile(t *testing.T, dir string) string {
	t.Helper()
	m, err := chart.Render("--set", "agent.enabled=true", "--set", "metrics.prometheusRule.enabled=true")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range m {
		if u.GetKind() != "PrometheusRule" {
			continue
		}
		out, err := yaml.Marshal(u.Object["spec"])
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "rules.yaml")
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Fatal("the chart renders no PrometheusRule")
	return ""
}

// TestAlerts checks the rules with promtool and runs testdata/alerts.yaml,
// where each alert fires on series that call for it and stays silent on
// the others.
func TestAlerts(t *testing.T) {
	tool := promtool(t)
	dir := t.TempDir()
	rules := rulesFile(t, dir)
	out, err := exec.Command(tool, "check", "rules", rules).CombinedOutput()
	t.Logf("promtool check rules:\n%s", out)
	if err != nil {
		t.Fatalf("promtool check rules: %v", err)
	}
	tests, err := os.ReadFile("testdata/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	testFile := filepath.Join(dir, "alerts.yaml")
	if err := os.WriteFile(testFile, tests, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(tool, "test", "rules", testFile).CombinedOutput()
	t.Logf("promtool test rules:\n%s", out)
	if err != nil {
		t.Fatalf("promtool test rules: %v", err)
	}

	// Every alert the rules define is tested.
	var defined struct {
		Groups []struct{ Rules []struct{ Alert string } }
	}
	var tested struct {
		Tests []struct {
			AlertRuleTest []struct {
				AlertName string `json:"alertname"`
			} `json:"alert_rule_test"`
		}
	}
	ruleBytes, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(ruleBytes, &defined); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(tests, &tested); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tc := range tested.Tests {
		for _, a := range tc.AlertRuleTest {
			names = append(names, a.AlertName)
		}
	}
	for _, g := range defined.Groups {
		for _, r := range g.Rules {
			if !slices.Contains(names, r.Alert) {
				t.Errorf("alert %s has no test in testdata/alerts.yaml", r.Alert)
			}
		}
	}
}

// Series meshcert reads from others: kube-state-metrics'.
var others = []string{
	"kube_pod_info", "kube_pod_container_info", "kube_pod_init_container_info", "kube_pod_status_ready",
	"kube_daemonset_status_number_ready", "kube_daemonset_status_desired_number_scheduled",
}

// registered tells whether controller-runtime's registry holds a metric of
// that name: a probe of that name with another help text is refused then,
// and only then.
func registered(t *testing.T, name string) bool {
	t.Helper()
	probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "probe", ConstLabels: prometheus.Labels{"probe": "probe"}})
	err := metrics.Registry.Register(probe)
	if err == nil {
		metrics.Registry.Unregister(probe)
		return false
	}
	if !strings.Contains(err.Error(), "different label names or a different help string") {
		t.Fatalf("probing %s: %v", name, err)
	}
	return true
}

// exported tells whether meshcert exports a series of that name: a
// metric of the registry, or of the inventory, which registers itself on
// the leader alone; a histogram's series by their suffixes.
func exported(t *testing.T, series string) bool {
	descs := make(chan *prometheus.Desc, 10)
	new(lookup.Inventory).Describe(descs)
	close(descs)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range descs {
		if fqName.FindStringSubmatch(d.String())[1] == series {
			return true
		}
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(series, suffix); ok && registered(t, base) {
			return true
		}
	}
	return registered(t, series)
}

// TestDashboard parses each query of the dashboard and checks that every
// series it reads is one meshcert exports, or one of others.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chart.Dir(), "files", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dashboard struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dashboard); err != nil {
		t.Fatal(err)
	}
	// Grafana's variables, as Grafana fills them in.
	grafana := strings.NewReplacer("$__rate_interval", "5m")
	queries := 0
	for _, p := range dashboard.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			queries++
			expr, err := parser.ParseExpr(grafana.Replace(target.Expr))
			if err != nil {
				t.Errorf("panel %q: %q: %v", p.Title, target.Expr, err)
				continue
			}
			for _, name := range seriesOf(expr) {
				if !slices.Contains(others, name) && !exported(t, name) {
					t.Errorf("panel %q reads %s, which meshcert does not export", p.Title, name)
				}
			}
		}
	}
	if queries == 0 {
		t.Error("the dashboard has no query")
	}
}

// seriesOf are the metric names an expression selects.
func seriesOf(expr parser.Expr) []string {
	var names []string
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

// TestExportedNames: the probe tells a metric meshcert registers from one
// it does not, so that TestDashboard can fail.
func TestExportedNames(t *testing.T) {
	tests := map[string]struct {
		series string
		want   bool
	}{
		"an agent's gauge":         {series: "meshcert_agent_svid_expiration_timestamp_seconds", want: true},
		"a histogram's buckets":    {series: "meshcert_issuance_duration_seconds_bucket", want: true},
		"the inventory's gauge":    {series: "meshcert_certificates_earliest_expiration_timestamp_seconds", want: true},
		"the MeshIdentity's gauge": {series: "meshcert_trust_root_expiration_timestamp_seconds", want: true},
		"the Mesh's gauge":         {series: "meshcert_mesh_root_expiration_timestamp_seconds", want: true},
		"a renamed metric":         {series: "meshcert_agent_svid_expiry_seconds"},
		"a suffix of nothing":      {series: "meshcert_nothing_bucket"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := exported(t, tc.series); got != tc.want {
				t.Errorf("exported(%s) = %t, want %t", tc.series, got, tc.want)
			}
		})
	}
}
