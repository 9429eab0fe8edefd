package kuma

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseDataplaneTags(t *testing.T) {
	tests := map[string]struct {
		json     string
		want     Tags
		wantErrs []string
	}{
		"no spec": {json: ``, want: Tags{}},
		"inbounds and gateway are merged, values sorted and distinct": {
			json: `{"networking":{"address":"10.0.0.1",
				"inbound":[{"port":80,"tags":{"kuma.io/service":"web","version":"v2"}},{"port":81,"tags":{"kuma.io/service":"admin","version":"v2"}}],
				"gateway":{"tags":{"kuma.io/service":"edge"}}}}`,
			want: Tags{"kuma.io/service": {"admin", "edge", "web"}, "version": {"v2"}},
		},
		"wrong types": {
			json: `{"networking":{"inbound":[{"tags":{"kuma.io/service":1}},"x"]}}`,
			want: Tags{},
			wantErrs: []string{
				"spec.networking.inbound[0].tags[kuma.io/service]: Invalid value: must be a string, not a number",
				"spec.networking.inbound[1]: Invalid value: must be an object, not a string",
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, errs := ParseDataplaneTags([]byte(tc.json))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("tags (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantErrs, errorStrings(errs)); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIdentityURIs(t *testing.T) {
	tests := map[string]struct {
		tags    Tags
		labels  map[string]string
		want    []string
		wantErr string
	}{
		"Kuma's order: spiffe per service, then kuma per tag and value, keys sorted": {
			tags: Tags{"version": {"v1"}, "kuma.io/service": {"a", "b"}, "kuma.io/zone": {"z1"}},
			want: []string{
				"spiffe://demo/a", "spiffe://demo/b",
				"kuma://kuma.io/service/a", "kuma://kuma.io/service/b", "kuma://kuma.io/zone/z1", "kuma://version/v1",
			},
		},
		"no service tag and no workload label": {
			tags:    Tags{"version": {"v1"}},
			labels:  map[string]string{"app": "web"},
			wantErr: `dataplane "web-1" has no kuma.io/service tag and no kuma.io/workload label, cannot derive mTLS identity`,
		},
		"an empty workload label is none": {
			labels:  map[string]string{WorkloadLabel: ""},
			wantErr: `dataplane "web-1" has no kuma.io/service tag and no kuma.io/workload label, cannot derive mTLS identity`,
		},
		"no service tag: the workload label is the only service and the only tag": {
			tags:   Tags{"version": {"v1"}, "team": {"a"}},
			labels: map[string]string{WorkloadLabel: "web"},
			want:   []string{"spiffe://demo/web", "kuma://kuma.io/service/web"},
		},
		"a service tag wins over the workload label": {
			tags:   Tags{ServiceTag: {"api"}, "version": {"v1"}},
			labels: map[string]string{WorkloadLabel: "web"},
			want:   []string{"spiffe://demo/api", "kuma://kuma.io/service/api", "kuma://version/v1"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			uris, err := IdentityURIs("demo", "web-1", tc.tags, tc.labels)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, u := range uris {
				got = append(got, u.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("URIs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMeshOfSecret(t *testing.T) {
	tests := map[string]struct {
		labels map[string]string
		want   string
	}{
		"no labels":         {want: DefaultMesh},
		"labelled":          {labels: map[string]string{MeshLabel: "payments"}, want: "payments"},
		"empty label":       {labels: map[string]string{MeshLabel: ""}, want: DefaultMesh},
		"other labels only": {labels: map[string]string{"app": "x"}, want: DefaultMesh},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := MeshOfSecret(tc.labels); got != tc.want {
				t.Errorf("MeshOfSecret() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestTrimDataplaneSpec(t *testing.T) {
	tests := map[string]struct {
		spec, want string
	}{
		"a Dataplane as Kuma's pod converter writes it keeps its tags only": {
			spec: `{"networking":{"address":"10.244.0.7","advertisedAddress":"10.244.0.7","admin":{"port":9901},` +
				`"inbound":[{"port":8080,"servicePort":80,"health":{"ready":true},"tags":{"kuma.io/service":"web_team-a_svc_80","kuma.io/protocol":"http","app":"web"}}],` +
				`"transparentProxying":{"redirectPortInbound":15006,"redirectPortOutbound":15001,"ipFamilyMode":"DualStack"}},"probes":{"port":9000,"endpoints":[{"path":"/ready"}]}}`,
			want: `{"networking":{"inbound":[{"tags":{"kuma.io/service":"web_team-a_svc_80","kuma.io/protocol":"http","app":"web"}}]}}`,
		},
		"a gateway keeps its tags": {
			spec: `{"networking":{"address":"10.0.0.2","gateway":{"type":"BUILTIN","tags":{"kuma.io/service":"edge"}}}}`,
			want: `{"networking":{"gateway":{"tags":{"kuma.io/service":"edge"}}}}`,
		},
		"an inbound without tags keeps its place": {
			spec: `{"networking":{"inbound":[{"port":1},{"port":2,"tags":{"a":"b"}}]}}`,
			want: `{"networking":{"inbound":[{},{"tags":{"a":"b"}}]}}`,
		},
		"no networking is nothing": {spec: `{"probes":{"port":9000}}`, want: `{}`},
		// Kept whole, so that ParseDataplaneTags names the same fields.
		"an inbound that is no list":    {spec: `{"networking":{"inbound":{"port":1}}}`, want: `{"networking":{"inbound":{"port":1}}}`},
		"an inbound entry that is null": {spec: `{"networking":{"inbound":[null]}}`, want: `{"networking":{"inbound":[null]}}`},
		"not JSON":                      {spec: `{"networking":`, want: `{"networking":`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := string(TrimDataplaneSpec([]byte(tc.spec))); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// The cases follow Kuma v2.14.3's KubernetesMetaAdapter.GetLabels
// (pkg/plugins/resources/k8s/store.go) on Dataplanes shaped as Kuma's
// defaulting webhook stores them.
func TestLabelView(t *testing.T) {
	tests := map[string]struct {
		labels, annotations map[string]string
		want                map[string]string
	}{
		"as Kuma stores it: the service account and workload in annotations": {
			labels:      map[string]string{"app": "web", NamespaceLabel: "shop", ZoneLabel: "zone-1"},
			annotations: map[string]string{DisplayNameKey: "web-7d9f-abcde", ServiceAccountLabel: "web-sa", WorkloadLabel: "web-sa"},
			want:        map[string]string{"app": "web", NamespaceLabel: "shop", ZoneLabel: "zone-1", DisplayNameKey: "web-7d9f-abcde", ServiceAccountLabel: "web-sa", WorkloadLabel: "web-sa"},
		},
		"the annotation wins over a label": {
			labels:      map[string]string{ServiceAccountLabel: "from-label", WorkloadLabel: "from-label"},
			annotations: map[string]string{ServiceAccountLabel: "web-sa", WorkloadLabel: "web"},
			want:        map[string]string{ServiceAccountLabel: "web-sa", WorkloadLabel: "web", DisplayNameKey: "web-1"},
		},
		"a label alone stays": {
			labels: map[string]string{ServiceAccountLabel: "from-label"},
			want:   map[string]string{ServiceAccountLabel: "from-label", DisplayNameKey: "web-1"},
		},
		"the display name defaults to the object's name": {
			want: map[string]string{DisplayNameKey: "web-1"},
		},
		"other annotations are not labels": {
			annotations: map[string]string{"kuma.io/mesh": "other", "team": "a"},
			want:        map[string]string{DisplayNameKey: "web-1"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dp := &DataplaneResource{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Labels: tc.labels, Annotations: tc.annotations}}
			if diff := cmp.Diff(tc.want, LabelView(dp)); diff != "" {
				t.Errorf("LabelView (-want +got):\n%s", diff)
			}
		})
	}
}
