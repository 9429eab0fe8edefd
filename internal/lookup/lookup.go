// Package lookup resolves what a Mesh or an identity refers to: the mesh
// Secrets of the system namespace, cert-manager issuers and their readiness,
// and CA material with its problems. It answers in plain values, without field
// paths (validation places them at its own paths), from maps fed by informer
// events rather than from the API server, and keeps meshcert's inventory of
// the certificates it delivered. The webhook and the controllers read through it.
package lookup

import (
	"context"
	"sync"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
)

// Index keeps just what meshcert asks about: the Secrets of the system
// namespace, the readiness of its Issuers and of every ClusterIssuer, and the
// inventory of delivered certificates. A question is a map read:
// no copy of the object, no REST mapping, as a cache read would cost on each
// admission. The objects are the informers' own and are never modified.
type Index struct {
	systemNamespace string

	mu      sync.RWMutex
	secrets map[string]*corev1.Secret
	issuers map[issuerKey]IssuerState
	// meshServices is each Mesh's spec.meshServices.mode.
	meshServices map[string]string
	inventory    *Inventory

	registrations []toolscache.ResourceEventHandlerRegistration
}

type issuerKey struct{ kind, name string }

var _ Lookup = (*Index)(nil)

// NewIndex feeds an Index from the cache's informers of Secrets, Issuers and
// ClusterIssuers, which it asks for if they do not exist yet.
func NewIndex(ctx context.Context, c cache.Cache, systemNamespace string) (*Index, error) {
	x := &Index{
		systemNamespace: systemNamespace,
		secrets:         map[string]*corev1.Secret{},
		issuers:         map[issuerKey]IssuerState{},
		meshServices:    map[string]string{},
		inventory:       newInventory(),
	}
	for obj, handler := range map[client.Object]func(obj any, deleted bool){
		&corev1.Secret{}:       x.onSecret,
		&cmapi.Issuer{}:        x.onIssuer,
		&cmapi.ClusterIssuer{}: x.onIssuer,
		&kuma.MeshResource{}:   x.onMesh,
	} {
		informer, err := c.GetInformer(ctx, obj)
		if err != nil {
			return nil, err
		}
		reg, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { handler(o, false) },
			UpdateFunc: func(_, o any) { handler(o, false) },
			DeleteFunc: func(o any) {
				if tombstone, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
					o = tombstone.Obj
				}
				handler(o, true)
			},
		})
		if err != nil {
			return nil, err
		}
		x.registrations = append(x.registrations, reg)
	}
	return x, nil
}

// HasSynced tells whether the index holds every object of the initial lists.
func (x *Index) HasSynced() bool {
	for _, r := range x.registrations {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

func (x *Index) onSecret(obj any, deleted bool) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if s.Namespace == x.systemNamespace {
		if deleted {
			delete(x.secrets, s.Name)
		} else {
			x.secrets[s.Name] = s
		}
	}
	x.inventory.onSecret(s, deleted || s.Labels[kuma.ManagedByLabel] != kuma.ManagedByValue)
}

func (x *Index) onIssuer(obj any, deleted bool) {
	var key issuerKey
	var status *cmapi.IssuerStatus
	var version string
	switch iss := obj.(type) {
	case *cmapi.Issuer:
		if iss.Namespace != x.systemNamespace {
			return
		}
		key, status, version = issuerKey{cmapi.IssuerKind, iss.Name}, &iss.Status, iss.ResourceVersion
	case *cmapi.ClusterIssuer:
		key, status, version = issuerKey{cmapi.ClusterIssuerKind, iss.Name}, &iss.Status, iss.ResourceVersion
	default:
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if deleted {
		delete(x.issuers, key)
		return
	}
	state := Readiness(status)
	state.ResourceVersion = version
	x.issuers[key] = state
}

func (x *Index) onMesh(obj any, deleted bool) {
	m, ok := obj.(*kuma.MeshResource)
	if !ok {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if deleted {
		delete(x.meshServices, m.Name)
		return
	}
	x.meshServices[m.Name] = kuma.MeshServicesMode(m.Spec)
}

// SystemSecret implements Lookup.
func (x *Index) SystemSecret(name string) (*corev1.Secret, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.secrets[name], nil
}

// Issuer implements Lookup.
func (x *Index) Issuer(ref cmmeta.IssuerReference) (*IssuerState, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	state, ok := x.issuers[issuerKey{ref.Kind, ref.Name}]
	if !ok {
		return nil, nil
	}
	return &state, nil
}

// IssuedBy implements Lookup.
func (x *Index) IssuedBy(mesh, backend string) (int, error) {
	return x.inventory.count(mesh, backend), nil
}

// MeshServicesMode implements Lookup.
func (x *Index) MeshServicesMode(mesh string) (string, bool, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	mode, ok := x.meshServices[mesh]
	return mode, ok, nil
}

// Inventory is what meshcert knows of the certificates it delivered.
func (x *Index) Inventory() *Inventory { return x.inventory }

// Readiness reads an issuer's Ready condition.
func Readiness(status *cmapi.IssuerStatus) IssuerState {
	for _, c := range status.Conditions {
		if c.Type == cmapi.IssuerConditionReady {
			return IssuerState{Ready: c.Status == cmmeta.ConditionTrue, Reason: c.Reason, Message: c.Message}
		}
	}
	return IssuerState{}
}
