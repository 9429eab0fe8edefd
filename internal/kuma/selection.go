package kuma

// Selects tells whether the identity's selector picks a Dataplane with these
// labels. As in Kuma, an identity without a dataplane selector picks none,
// and an empty matchLabels picks every Dataplane of its mesh.
func (m *MeshIdentityResource) Selects(labels map[string]string) bool {
	s := m.Spec.Selector
	if s == nil || s.Dataplane == nil {
		return false
	}
	for k, v := range s.Dataplane.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// SelectMeshIdentity is the identity Kuma gives a Dataplane of mesh with
// these labels: of the identities of that mesh that select it, the one with
// the most matchLabels, then the smallest name as Kuma names it. nil when
// none selects it.
func SelectMeshIdentity(identities []*MeshIdentityResource, mesh string, labels map[string]string) *MeshIdentityResource {
	var best *MeshIdentityResource
	for _, mid := range identities {
		if mid.MeshName() != mesh || !mid.Selects(labels) {
			continue
		}
		if best == nil || moreSpecific(mid, best) {
			best = mid
		}
	}
	return best
}

func moreSpecific(a, b *MeshIdentityResource) bool {
	na, nb := len(a.Spec.Selector.Dataplane.MatchLabels), len(b.Spec.Selector.Dataplane.MatchLabels)
	if na != nb {
		return na > nb
	}
	return StoreName(a) < StoreName(b) // so "web-v2" comes before "web"
}
