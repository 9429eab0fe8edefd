package kuma

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// DefaultMesh is the mesh of a Dataplane or mesh Secret that names none.
const DefaultMesh = "default"

// ServiceTag is the tag whose values name a dataplane's services.
const ServiceTag = "kuma.io/service"

// Tags is a dataplane's identity tags: each key with its distinct values, sorted.
type Tags map[string][]string

// ParseDataplaneTags reads the union of spec.networking.inbound[].tags and
// spec.networking.gateway.tags from a Dataplane spec's JSON.
func ParseDataplaneTags(raw []byte) (Tags, field.ErrorList) {
	tags := Tags{}
	if len(raw) == 0 {
		return tags, nil
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return tags, field.ErrorList{field.Invalid(SpecPath, field.OmitValueType{}, fmt.Sprintf("is not valid JSON: %v", err))}
	}
	r := &reader{}
	spec, _ := r.object(doc, SpecPath)
	netPath := SpecPath.Child("networking")
	networking, _ := r.optObject(spec, "networking", netPath)
	for i, item := range r.array(networking, "inbound", netPath) {
		ip := netPath.Child("inbound").Index(i)
		if inbound, ok := r.object(item, ip); ok {
			r.tags(inbound, ip, tags)
		}
	}
	if gw, ok := r.optObject(networking, "gateway", netPath.Child("gateway")); ok {
		r.tags(gw, netPath.Child("gateway"), tags)
	}
	for k, v := range tags {
		slices.Sort(v)
		tags[k] = slices.Compact(v)
	}
	return tags, r.errs
}

// TrimDataplaneSpec keeps of a Dataplane spec only what ParseDataplaneTags
// reads, at the same paths, so that a cache of many Dataplanes holds their
// tags and not their addresses, ports, probes and the rest. Where the spec
// is not shaped as ParseDataplaneTags expects, it is kept whole, so that its
// errors name the same fields; a fuzz test holds the two to the same result.
func TrimDataplaneSpec(raw []byte) []byte {
	var spec map[string]json.RawMessage
	if json.Unmarshal(raw, &spec) != nil || spec == nil {
		return raw
	}
	networkingRaw, ok := spec["networking"]
	if !ok {
		return []byte("{}")
	}
	var networking map[string]json.RawMessage
	if json.Unmarshal(networkingRaw, &networking) != nil || networking == nil {
		return raw
	}
	kept := map[string]json.RawMessage{}
	if inboundRaw, ok := networking["inbound"]; ok {
		var inbound []json.RawMessage
		if json.Unmarshal(inboundRaw, &inbound) != nil || inbound == nil {
			return raw
		}
		for i, item := range inbound {
			inbound[i] = keepTags(item)
		}
		kept["inbound"], _ = json.Marshal(inbound)
	}
	if gateway, ok := networking["gateway"]; ok {
		kept["gateway"] = keepTags(gateway)
	}
	out, err := json.Marshal(map[string]any{"networking": kept})
	if err != nil {
		return raw
	}
	return out
}

// keepTags keeps an inbound's or a gateway's tags, or the whole value if it
// is no object.
func keepTags(raw json.RawMessage) json.RawMessage {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil || obj == nil {
		return raw
	}
	tags, ok := obj["tags"]
	if !ok {
		return json.RawMessage("{}")
	}
	out, err := json.Marshal(map[string]json.RawMessage{"tags": tags})
	if err != nil {
		return raw
	}
	return out
}

func (r *reader) tags(obj map[string]any, p *field.Path, into Tags) {
	m, _ := r.optObject(obj, "tags", p.Child("tags"))
	for k, v := range m {
		if s, ok := v.(string); ok {
			into[k] = append(into[k], s)
		} else {
			r.typeError(p.Child("tags").Key(k), v, "a string")
		}
	}
}

// Keys returns the tag keys in sorted order.
func (t Tags) Keys() []string {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// WorkloadLabel is the Dataplane label Kuma falls back to for a dataplane's
// service when its tags name none.
const WorkloadLabel = "kuma.io/workload"

// IdentityTags is the tag set a dataplane's identity is derived from, as Kuma
// (v2.14.3, pkg/xds/secrets/identity_tags.go) derives it: its tags when they
// name a service; else, when the Dataplane's label view (LabelView: on
// Kubernetes the workload is an annotation) has a kuma.io/workload, that
// workload as the only service and the only tag. dataplane is the name Kuma's
// message quotes (StoreName).
func IdentityTags(dataplane string, tags Tags, labels map[string]string) (Tags, error) {
	if len(tags[ServiceTag]) > 0 {
		return tags, nil
	}
	if workload := labels[WorkloadLabel]; workload != "" {
		return Tags{ServiceTag: {workload}}, nil
	}
	return nil, fmt.Errorf("dataplane %q has no %s tag and no %s label, cannot derive mTLS identity", dataplane, ServiceTag, WorkloadLabel)
}

// IdentityURIs returns the URI SANs Kuma's builtin CA puts in a dataplane
// certificate, from its identity tags: spiffe://<mesh>/<service> for each
// service, then kuma://<tag>/<value> for every tag and value, keys and values
// sorted.
func IdentityURIs(mesh, dataplane string, tags Tags, labels map[string]string) ([]*url.URL, error) {
	tags, err := IdentityTags(dataplane, tags, labels)
	if err != nil {
		return nil, err
	}
	services := tags[ServiceTag]
	uris := make([]*url.URL, 0, len(services)+len(tags))
	add := func(raw string) error {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("dataplane %q: %q is not a valid URI SAN: %w", dataplane, raw, err)
		}
		uris = append(uris, u)
		return nil
	}
	for _, svc := range services {
		if err := add(fmt.Sprintf("spiffe://%s/%s", mesh, svc)); err != nil {
			return nil, err
		}
	}
	for _, key := range tags.Keys() {
		for _, value := range tags[key] {
			if err := add(fmt.Sprintf("kuma://%s/%s", key, value)); err != nil {
				return nil, err
			}
		}
	}
	return uris, nil
}
