package kuma

// The private key algorithms meshcert can make, in the names that
// --key-algorithm and the meshcert.io/key-algorithm annotation take. ECDSA
// P-256 is the default: as strong as RSA 2048, which Kuma's builtin CA
// makes, and far cheaper to generate.
var KeyAlgorithms = []string{"ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096"}

// KeyAlgorithmAnnotation on a Mesh or a MeshIdentity chooses the key
// algorithm of its certificates, over --key-algorithm.
const KeyAlgorithmAnnotation = "meshcert.io/key-algorithm"
