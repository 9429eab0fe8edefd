package kuma

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsjson "sigs.k8s.io/json"
)

// ErrNotObject means the data is not a JSON object at all.
var ErrNotObject = errors.New("the object is not a JSON object")

// DecodeMesh reads a Mesh object's spec, and its name unless name is given
// (as admission requests give it, sparing the decoding of metadata). Field errors
// say what in the spec is of the wrong type; an error, that the data is not
// an object.
//
// Most Meshes are well-formed, so it first decodes into typed structs, with
// keys matched case-sensitively as the API server does: "Spec" is not the
// spec. Only when that fails does it walk the JSON generically, as
// ParseMeshSpec does, to name each value of the wrong type. A fuzz test holds
// the two to the same result.
func DecodeMesh(raw []byte, name string) (Mesh, field.ErrorList, error) {
	if name != "" {
		if spec, ok := decodeTyped(raw); ok {
			return Mesh{Name: name, KeyAlgorithm: keyAlgorithmOf(raw), Spec: spec}, nil, nil
		}
	}
	m, errs, err := decodeGeneric(raw)
	if name != "" {
		m.Name = name
	}
	m.KeyAlgorithm = keyAlgorithmOf(raw)
	return m, errs, err
}

// keyAlgorithmOf reads a Mesh's meshcert.io/key-algorithm annotation. Most
// Meshes have none, and their metadata is not decoded at all.
func keyAlgorithmOf(raw []byte) *string {
	if !bytes.Contains(raw, []byte(KeyAlgorithmAnnotation)) {
		return nil
	}
	var doc struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if json.Unmarshal(raw, &doc) != nil {
		return nil
	}
	if v, ok := doc.Metadata.Annotations[KeyAlgorithmAnnotation]; ok {
		return &v
	}
	return nil
}

func decodeGeneric(raw []byte) (Mesh, field.ErrorList, error) {
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return Mesh{}, nil, fmt.Errorf("%w: %v", ErrNotObject, err)
	}
	if obj == nil {
		return Mesh{}, nil, ErrNotObject
	}
	var m Mesh
	if meta, ok := obj["metadata"].(map[string]any); ok {
		m.Name, _ = meta["name"].(string)
	}
	spec, errs := MeshSpecFrom(obj["spec"])
	m.Spec = spec
	return m, errs, nil
}

type meshDoc struct {
	Spec *struct {
		MTLS *struct {
			EnabledBackend string       `json:"enabledBackend"`
			SkipValidation bool         `json:"skipValidation"`
			Backends       []backendDoc `json:"backends"`
		} `json:"mtls"`
	} `json:"spec"`
}

type backendDoc struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	Mode   string `json:"mode"`
	DpCert *struct {
		RequestTimeout string `json:"requestTimeout"`
		Rotation       *struct {
			Expiration string `json:"expiration"`
		} `json:"rotation"`
	} `json:"dpCert"`
	Conf json.RawMessage `json:"conf"`
}

type certManagerConfDoc struct {
	IssuerRef *struct {
		Name  string `json:"name"`
		Kind  string `json:"kind"`
		Group string `json:"group"`
	} `json:"issuerRef"`
	CACert *dataSourceDoc `json:"caCert"`
}

type dataSourceDoc struct {
	Secret       *string `json:"secret"`
	Inline       *string `json:"inline"`
	InlineString *string `json:"inlineString"`
	File         *string `json:"file"`
}

// decodeTyped is the fast path of DecodeMesh; false sends the caller to the
// generic one, which reports what is wrong.
func decodeTyped(raw []byte) (MeshSpec, bool) {
	var doc meshDoc
	if !isObject(raw) || sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &doc) != nil {
		return MeshSpec{}, false
	}
	if doc.Spec == nil || doc.Spec.MTLS == nil {
		return MeshSpec{}, true
	}
	mtls := &MTLS{EnabledBackend: doc.Spec.MTLS.EnabledBackend, SkipValidation: doc.Spec.MTLS.SkipValidation}
	for _, bd := range doc.Spec.MTLS.Backends {
		b := Backend{Name: bd.Name, Type: bd.Type, Mode: bd.Mode}
		if bd.DpCert != nil {
			b.DpCert.RequestTimeout = bd.DpCert.RequestTimeout
			if bd.DpCert.Rotation != nil {
				b.DpCert.Expiration = bd.DpCert.Rotation.Expiration
			}
		}
		switch b.Type {
		case BackendTypeCertManager:
			conf := &CertManagerConf{}
			if len(bd.Conf) > 0 && string(bd.Conf) != "null" {
				var cd certManagerConfDoc
				if !isObject(bd.Conf) || sigsjson.UnmarshalCaseSensitivePreserveInts(bd.Conf, &cd) != nil {
					return MeshSpec{}, false
				}
				if cd.IssuerRef != nil {
					conf.HasIssuerRef = true
					conf.IssuerRef = cmmeta.IssuerReference{Name: cd.IssuerRef.Name, Kind: cd.IssuerRef.Kind, Group: cd.IssuerRef.Group}
				}
				if cd.CACert != nil {
					ds, ok := cd.CACert.dataSource()
					if !ok {
						return MeshSpec{}, false
					}
					conf.CACert = ds
				}
			}
			b.CertManager = conf
		case BackendTypeProvided:
			// The generic reader reads a provided backend's cert leniently;
			// leave such backends to it.
			return MeshSpec{}, false
		}
		mtls.Backends = append(mtls.Backends, b)
	}
	return MeshSpec{MTLS: mtls}, true
}

func (d dataSourceDoc) dataSource() (*DataSource, bool) {
	ds := &DataSource{Secret: d.Secret, InlineString: d.InlineString, File: d.File}
	if d.Inline != nil {
		decoded, err := base64.StdEncoding.DecodeString(*d.Inline)
		if err != nil {
			return nil, false
		}
		ds.Inline, ds.HasInline = decoded, true
	}
	return ds, true
}

// isObject tells whether JSON data is an object, which a typed decode does
// not check: it takes null for an empty struct.
func isObject(raw []byte) bool {
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	return len(trimmed) > 0 && trimmed[0] == '{'
}
