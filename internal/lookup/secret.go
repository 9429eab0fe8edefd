package lookup

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshcert/meshcert/internal/kuma"
)

// MeshSecret finds the mesh Secret that name refers to for mesh, and says
// which of Kuma's conditions it fails: it must be in the system namespace, of
// the mesh Secret type, and labelled for this mesh.
func MeshSecret(mesh, name string, env Env) (*corev1.Secret, *Problem) {
	secret, err := env.Lookup.SystemSecret(name)
	ref := env.SystemNamespace + "/" + name
	invalid := func(format string, args ...any) (*corev1.Secret, *Problem) {
		return nil, &Problem{Type: Invalid, Value: name, Message: fmt.Sprintf(format, args...)}
	}
	switch {
	case err != nil:
		return nil, &Problem{Type: LookupFailed, Value: name, Message: fmt.Sprintf("could not look up Secret %s: %v", ref, err)}
	case secret == nil:
		return nil, &Problem{Type: NotFound, Value: name,
			Message: fmt.Sprintf("no Secret %q in the system namespace %q, where mesh Secrets must be", name, env.SystemNamespace)}
	case secret.Type == kuma.GlobalSecretType:
		return invalid("Secret %s is a global secret (type %q); caCert needs a mesh Secret of type %q", ref, secret.Type, kuma.MeshSecretType)
	case secret.Type != kuma.MeshSecretType:
		return invalid("Secret %s has type %q; caCert needs a mesh Secret of type %q", ref, secret.Type, kuma.MeshSecretType)
	}
	if owner := kuma.MeshOfSecret(secret.Labels); owner != mesh {
		why := fmt.Sprintf("label %s=%s", kuma.MeshLabel, owner)
		if _, labelled := secret.Labels[kuma.MeshLabel]; !labelled {
			why = fmt.Sprintf("it has no %s label", kuma.MeshLabel)
		}
		return invalid("Secret %s belongs to mesh %q (%s), not to mesh %q", ref, owner, why, mesh)
	}
	return secret, nil
}
