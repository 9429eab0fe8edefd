package kuma

// Kuma's mesh Secrets on Kubernetes live in the system namespace, with the
// payload under data.value.
const (
	MeshSecretType   = "system.kuma.io/secret"
	GlobalSecretType = "system.kuma.io/global-secret"
	MeshLabel        = "kuma.io/mesh"
	SecretValueKey   = "value"
)

// MeshOfSecret returns the mesh a mesh Secret belongs to: its kuma.io/mesh
// label, or the default mesh when the label is missing.
func MeshOfSecret(labels map[string]string) string {
	if m, ok := labels[MeshLabel]; ok && m != "" {
		return m
	}
	return DefaultMesh
}

// BuiltinCASecretName is the mesh Secret in which Kuma keeps the CA
// certificate of a builtin backend.
func BuiltinCASecretName(mesh, backend string) string {
	return mesh + ".ca-builtin-cert-" + backend
}
