package kuma

import (
	"encoding/json"
	"maps"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion of Kuma's Kubernetes resources.
var GroupVersion = schema.GroupVersion{Group: "kuma.io", Version: "v1alpha1"}

// MeshResource is the kuma.io/v1alpha1 Mesh object as stored, with its spec
// kept as raw JSON; ParseMeshSpec reads it.
type MeshResource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              json.RawMessage `json:"spec,omitempty"`
}

// MeshResourceList is a list of Meshes.
type MeshResourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshResource `json:"items"`
}

// DataplaneResource is the kuma.io/v1alpha1 Dataplane object. Its mesh is the
// top-level mesh field, not part of the spec.
type DataplaneResource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Mesh              string          `json:"mesh,omitempty"`
	Spec              json.RawMessage `json:"spec,omitempty"`
}

// MeshName is the dataplane's mesh, "default" when it names none.
func (d *DataplaneResource) MeshName() string {
	if d.Mesh == "" {
		return DefaultMesh
	}
	return d.Mesh
}

// DisplayNameKey, with ServiceAccountLabel and WorkloadLabel, is a label that
// Kuma's store keeps as an annotation of every object it admits on Kubernetes
// and reads back as a label (v2.14.3, pkg/plugins/resources/k8s/store.go
// SplitLabelsAndAnnotations).
const DisplayNameKey = "kuma.io/display-name"

// LabelView is the labels of an object as Kuma reads them on Kubernetes
// (v2.14.3, pkg/plugins/resources/k8s/store.go KubernetesMetaAdapter.GetLabels):
// its labels, then the service account and workload annotations over them,
// and the display name from its annotation, else the object's name. Kuma's
// defaulting webhook moves those keys out of the labels of every object it
// admits, so a Dataplane that Kuma wrote names its service account only in an
// annotation, and a MeshIdentity its display name.
func LabelView(obj metav1.Object) map[string]string {
	labels, annotations := obj.GetLabels(), obj.GetAnnotations()
	view := make(map[string]string, len(labels)+3)
	maps.Copy(view, labels)
	if name, ok := annotations[DisplayNameKey]; ok {
		view[DisplayNameKey] = name
	} else {
		view[DisplayNameKey] = obj.GetName()
	}
	for _, k := range []string{ServiceAccountLabel, WorkloadLabel} {
		if v, ok := annotations[k]; ok {
			view[k] = v
		}
	}
	return view
}

// StoreName is a namespaced object's name as Kuma's store names it on
// Kubernetes, and as its messages quote it and its selection breaks ties on
// it: "<name>.<namespace>" (v2.14.3, pkg/util/k8s/name_converter.go).
func StoreName(obj metav1.Object) string {
	return obj.GetName() + "." + obj.GetNamespace()
}

// DataplaneResourceList is a list of Dataplanes.
type DataplaneResourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DataplaneResource `json:"items"`
}

// AddToScheme registers the Kuma types under their Kubernetes kinds.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypeWithName(GroupVersion.WithKind("Mesh"), &MeshResource{})
	s.AddKnownTypeWithName(GroupVersion.WithKind("MeshList"), &MeshResourceList{})
	s.AddKnownTypeWithName(GroupVersion.WithKind("Dataplane"), &DataplaneResource{})
	s.AddKnownTypeWithName(GroupVersion.WithKind("DataplaneList"), &DataplaneResourceList{})
	s.AddKnownTypeWithName(GroupVersion.WithKind("MeshIdentity"), &MeshIdentityResource{})
	s.AddKnownTypeWithName(GroupVersion.WithKind("MeshIdentityList"), &MeshIdentityResourceList{})
	s.AddKnownTypeWithName(GroupVersion.WithKind("MeshTrust"), &MeshTrustResource{})
	s.AddKnownTypeWithName(GroupVersion.WithKind("MeshTrustList"), &MeshTrustResourceList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// DeepCopyObject implements runtime.Object.
func (m *MeshResource) DeepCopyObject() runtime.Object { return m.DeepCopy() }

// DeepCopy copies the Mesh.
func (m *MeshResource) DeepCopy() *MeshResource {
	if m == nil {
		return nil
	}
	out := &MeshResource{TypeMeta: m.TypeMeta, Spec: slices.Clone(m.Spec)}
	m.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *MeshResourceList) DeepCopyObject() runtime.Object {
	out := &MeshResourceList{TypeMeta: l.TypeMeta, Items: copyItems(l.Items)}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	return out
}

// DeepCopyObject implements runtime.Object.
func (d *DataplaneResource) DeepCopyObject() runtime.Object { return d.DeepCopy() }

// DeepCopy copies the Dataplane.
func (d *DataplaneResource) DeepCopy() *DataplaneResource {
	if d == nil {
		return nil
	}
	out := &DataplaneResource{TypeMeta: d.TypeMeta, Mesh: d.Mesh, Spec: slices.Clone(d.Spec)}
	d.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *DataplaneResourceList) DeepCopyObject() runtime.Object {
	out := &DataplaneResourceList{TypeMeta: l.TypeMeta, Items: copyItems(l.Items)}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	return out
}

// copyItems deep-copies the items of a list.
func copyItems[T any, P interface {
	*T
	DeepCopy() *T
}](items []T) []T {
	if items == nil {
		return nil
	}
	out := make([]T, len(items))
	for i := range items {
		out[i] = *P(&items[i]).DeepCopy()
	}
	return out
}
