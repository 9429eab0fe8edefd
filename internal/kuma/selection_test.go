package kuma

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func identity(name, mesh string, matchLabels map[string]string) *MeshIdentityResource {
	mid := &MeshIdentityResource{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kong-mesh-system", Labels: map[string]string{"kuma.io/mesh": mesh}}}
	if matchLabels != nil {
		mid.Spec.Selector = &IdentitySelector{Dataplane: &LabelSelector{MatchLabels: matchLabels}}
	}
	return mid
}

func TestSelectMeshIdentity(t *testing.T) {
	web := map[string]string{"app": "web", "team": "payments", "kuma.io/mesh": "payments"}
	tests := map[string]struct {
		identities []*MeshIdentityResource
		want       string
	}{
		"none":                              {},
		"the only one that selects it":      {identities: []*MeshIdentityResource{identity("a", "payments", map[string]string{"app": "web"}), identity("b", "payments", map[string]string{"app": "db"})}, want: "a"},
		"the most matchLabels wins":         {identities: []*MeshIdentityResource{identity("a", "payments", map[string]string{"app": "web"}), identity("z", "payments", map[string]string{"app": "web", "team": "payments"})}, want: "z"},
		"then the smallest name":            {identities: []*MeshIdentityResource{identity("b", "payments", map[string]string{"app": "web"}), identity("a", "payments", map[string]string{"team": "payments"})}, want: "a"},
		"an empty matchLabels selects all":  {identities: []*MeshIdentityResource{identity("all", "payments", map[string]string{})}, want: "all"},
		"no selector selects none":          {identities: []*MeshIdentityResource{identity("none", "payments", nil)}},
		"a selector without dataplane":      {identities: []*MeshIdentityResource{{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"kuma.io/mesh": "payments"}}, Spec: MeshIdentitySpec{Selector: &IdentitySelector{}}}}},
		"another mesh's identity":           {identities: []*MeshIdentityResource{identity("other", "orders", map[string]string{})}},
		"a label of another value":          {identities: []*MeshIdentityResource{identity("a", "payments", map[string]string{"app": "api"})}},
		"a label the dataplane lacks":       {identities: []*MeshIdentityResource{identity("a", "payments", map[string]string{"tier": "gold"})}},
		"a tie goes to <name>.<namespace>":  {identities: []*MeshIdentityResource{identity("web", "payments", map[string]string{"app": "web"}), identity("web-v2", "payments", map[string]string{"app": "web"})}, want: "web-v2"},
		"the specific one over the general": {identities: []*MeshIdentityResource{identity("all", "payments", map[string]string{}), identity("web", "payments", map[string]string{"app": "web"})}, want: "web"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := SelectMeshIdentity(tc.identities, "payments", web)
			switch {
			case got == nil && tc.want != "":
				t.Errorf("got none, want %s", tc.want)
			case got != nil && got.Name != tc.want:
				t.Errorf("got %s, want %q", got.Name, tc.want)
			}
		})
	}
}
