package kuma

import (
	"net/url"
	"strings"
	"testing"
)

func TestCheckSpiffeID(t *testing.T) {
	tests := map[string]struct {
		id      string
		wantErr string
	}{
		"trust domain only":          {id: "spiffe://example.org"},
		"with a path":                {id: "spiffe://payments.zone-1.mesh.local/ns/app/sa/web"},
		"path characters":            {id: "spiffe://td/a.b-c_D9"},
		"empty":                      {wantErr: "cannot be empty"},
		"another scheme":             {id: "https://example.org/x", wantErr: "scheme is missing or invalid"},
		"no trust domain":            {id: "spiffe:///x", wantErr: "trust domain is missing"},
		"an upper-case trust domain": {id: "spiffe://Example.org", wantErr: "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"},
		"a port":                     {id: "spiffe://example.org:443/x", wantErr: "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"},
		"a trailing slash":           {id: "spiffe://td/x/", wantErr: "path cannot have a trailing slash"},
		"only a slash":               {id: "spiffe://td/", wantErr: "path cannot have a trailing slash"},
		"an empty segment":           {id: "spiffe://td/ns//sa/x", wantErr: "path cannot contain empty segments"},
		"a dot segment":              {id: "spiffe://td/a/../b", wantErr: "path cannot contain dot segments"},
		"a space":                    {id: "spiffe://td/a b", wantErr: "path segment characters are limited to letters, numbers, dots, dashes, and underscores"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckSpiffeID(tc.id)
			if got := errString(err); got != tc.wantErr {
				t.Errorf("CheckSpiffeID(%q) = %q, want %q", tc.id, got, tc.wantErr)
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
