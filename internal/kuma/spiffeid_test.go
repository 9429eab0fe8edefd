package kuma

import (
	"net/url"
	"strings"
	"testing"
)

// TestSpiffeIDSyntax: an invalid trust domain or SPIFFE ID is refused in
// go-spiffe's words, which the webhook shows.
func TestSpiffeIDSyntax(t *testing.T) {
	tests := map[string]struct {
		trustDomain, path string
		wantErr           string
	}{
		"trust domain only":          {trustDomain: "example.org", path: ""},
		"with a path":                {trustDomain: "payments.zone-1.mesh.local", path: "/ns/app/sa/web"},
		"path characters":            {trustDomain: "td", path: "/a.b-c_D9"},
		"no trust domain":            {trustDomain: "", path: "/x", wantErr: "trust domain is missing"},
		"an upper-case trust domain": {trustDomain: "Example.org", wantErr: "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"},
		"a port":                     {trustDomain: "example.org:443", wantErr: "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"},
		"no leading slash":           {trustDomain: "td", path: "x", wantErr: `the path "x": path must have a leading slash`},
		"a trailing slash":           {trustDomain: "td", path: "/x/", wantErr: `"spiffe://td/x/" is not a SPIFFE ID: path cannot have a trailing slash`},
		"only a slash":               {trustDomain: "td", path: "/", wantErr: `"spiffe://td/" is not a SPIFFE ID: path cannot have a trailing slash`},
		"an empty segment":           {trustDomain: "td", path: "/ns//sa/x", wantErr: `"spiffe://td/ns//sa/x" is not a SPIFFE ID: path cannot contain empty segments`},
		"a dot segment":              {trustDomain: "td", path: "/a/../b", wantErr: `"spiffe://td/a/../b" is not a SPIFFE ID: path cannot contain dot segments`},
		"a space":                    {trustDomain: "td", path: "/a b", wantErr: `"spiffe://td/a b" is not a SPIFFE ID: path segment characters are limited to letters, numbers, dots, dashes, and underscores`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			td, err := RenderTrustDomain(tc.trustDomain, "mesh", "zone", nil)
			if err == nil {
				_, err = RenderSpiffeID(td, tc.path, nil)
			}
			if got := errString(err); got != tc.wantErr {
				t.Errorf("%q and %q: %q, want %q", tc.trustDomain, tc.path, got, tc.wantErr)
			}
		})
	}
}

func TestRenderSpiffeID(t *testing.T) {
	str := func(s string) *string { return &s }
	labels := map[string]string{NamespaceLabel: "app", ServiceAccountLabel: "web", WorkloadLabel: "web-v1", "team": "payments", ZoneLabel: "east"}
	tests := map[string]struct {
		id       *SpiffeID
		mesh     string
		idLabels map[string]string
		dpLabels map[string]string
		want     string
		wantErr  string
	}{
		"Kuma's defaults": {mesh: "demo", dpLabels: labels, want: "spiffe://demo.west.mesh.local/ns/app/sa/web"},
		"the identity's zone label wins over the local zone": {
			mesh: "demo", idLabels: map[string]string{ZoneLabel: "east"}, dpLabels: labels, want: "spiffe://demo.east.mesh.local/ns/app/sa/web",
		},
		"labels and the workload": {
			id:   &SpiffeID{TrustDomain: str(`{{ .Mesh }}.example.com`), Path: str(`/team/{{ label "team" }}/{{ .Workload }}`)},
			mesh: "demo", dpLabels: labels, want: "spiffe://demo.example.com/team/payments/web-v1",
		},
		"a missing label is an error": {
			id:   &SpiffeID{Path: str(`/team/{{ label "owner" }}`)},
			mesh: "demo", dpLabels: labels,
			wantErr: `rendering the template: template: :1:9: executing "" at <label "owner">: error calling label: label owner not found`,
		},
		"a missing namespace label gives an empty segment": {
			mesh: "demo", dpLabels: map[string]string{ServiceAccountLabel: "web"},
			wantErr: `"spiffe://demo.west.mesh.local/ns//sa/web" is not a SPIFFE ID: path cannot contain empty segments`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			td, err := RenderTrustDomain(tc.id.TrustDomainTemplate(), tc.mesh, "west", tc.idLabels)
			if err != nil {
				t.Fatal(err)
			}
			got, err := RenderSpiffeID(td, tc.id.PathTemplate(), tc.dpLabels)
			if errString(err) != tc.wantErr || got != tc.want {
				t.Errorf("got %q, %q; want %q, %q", got, errString(err), tc.want, tc.wantErr)
			}
		})
	}
}

// FuzzSpiffeID: any templates and labels render without panic, and what
// renders is a SPIFFE ID: a spiffe URL of that trust domain.
func FuzzSpiffeID(f *testing.F) {
	f.Add(DefaultTrustDomainTemplate, DefaultPathTemplate, "demo", "app")
	f.Add(`{{ label "team" }}.example.com`, `/{{ .Workload }}/{{ label "x" }}`, "m", "")
	f.Add("{{ .Mesh ", "/{{ template \"x\" }}", "", "a/b")
	f.Fuzz(func(t *testing.T, tdTmpl, pathTmpl, mesh, value string) {
		labels := map[string]string{NamespaceLabel: value, ServiceAccountLabel: value, WorkloadLabel: value, "team": value, "x": value}
		td, err := RenderTrustDomain(tdTmpl, mesh, "zone", labels)
		if err != nil {
			return
		}
		id, err := RenderSpiffeID(td, pathTmpl, labels)
		if err != nil {
			return
		}
		u, err := url.Parse(id)
		if err != nil || u.Scheme != "spiffe" || u.Host != td || strings.HasSuffix(id, "/") {
			t.Fatalf("rendered %q, which is not a SPIFFE ID of trust domain %q (%v)", id, td, err)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
