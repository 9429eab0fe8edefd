package kuma

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kuma's defaults for a MeshIdentity's SPIFFE ID on Kubernetes (v2.14.3,
// pkg/core/resources/apis/meshidentity/api/v1alpha1/helpers.go).
const (
	DefaultTrustDomainTemplate = "{{ .Mesh }}.{{ .Zone }}.mesh.local"
	DefaultPathTemplate        = "/ns/{{ .Namespace }}/sa/{{ .ServiceAccount }}"
)

// The Dataplane labels Kuma's SPIFFE ID templates read.
const (
	ZoneLabel           = "kuma.io/zone"
	NamespaceLabel      = "k8s.kuma.io/namespace"
	ServiceAccountLabel = "k8s.kuma.io/service-account"
)

// TrustDomainTemplate is the identity's trust domain template, or Kuma's
// default when it sets none. An explicit "" is kept, as Kuma keeps it.
func (s *SpiffeID) TrustDomainTemplate() string {
	if s == nil || s.TrustDomain == nil {
		return DefaultTrustDomainTemplate
	}
	return *s.TrustDomain
}

// PathTemplate is the identity's path template, or Kuma's default on
// Kubernetes.
func (s *SpiffeID) PathTemplate() string {
	if s == nil || s.Path == nil {
		return DefaultPathTemplate
	}
	return *s.Path
}

// RenderTrustDomain renders a trust domain template as Kuma does, with the
// identity's mesh, its zone (its kuma.io/zone label, else localZone), and
// `label "key"` over the identity's labels; the result must be a trust
// domain.
func RenderTrustDomain(tmpl, mesh, localZone string, labels map[string]string) (string, error) {
	zone := labels[ZoneLabel]
	if zone == "" {
		zone = localZone
	}
	td, err := render(tmpl, labelOf(labels), trustDomainFields, struct{ Mesh, Zone string }{mesh, zone})
	if err != nil {
		return "", err
	}
	// Checked as the host of a SPIFFE ID, as an ID of that trust domain is
	// checked next.
	_, err = spiffeid.FromString("spiffe://" + td)
	return td, err
}

// RenderSpiffeID renders a workload's SPIFFE ID as Kuma does: the path
// template with .TrustDomain, .Namespace, .ServiceAccount and .Workload from
// the Dataplane's labels, and `label "key"` over them; the result must be a
// valid SPIFFE ID.
func RenderSpiffeID(trustDomain, pathTmpl string, labels map[string]string) (string, error) {
	return renderSpiffeID(trustDomain, pathTmpl, labels, labelOf(labels))
}

// SampleSpiffeID renders a path template for a sample workload that has
// every label the template reads, so that only the template itself can fail:
// which labels a workload has is known only once it exists.
func SampleSpiffeID(trustDomain, pathTmpl string) (string, error) {
	sample := map[string]string{NamespaceLabel: "namespace", ServiceAccountLabel: "service-account", WorkloadLabel: "workload"}
	return renderSpiffeID(trustDomain, pathTmpl, sample, func(string) (string, error) { return "label", nil })
}

func renderSpiffeID(trustDomain, pathTmpl string, labels map[string]string, label func(string) (string, error)) (string, error) {
	path, err := render(pathTmpl, label, pathFields, struct{ TrustDomain, Namespace, ServiceAccount, Workload string }{
		trustDomain, labels[NamespaceLabel], labels[ServiceAccountLabel], labels[WorkloadLabel],
	})
	if err != nil {
		return "", err
	}
	// Else the path would run on into the trust domain.
	if path != "" && !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("the path %q: path must have a leading slash", path)
	}
	id := "spiffe://" + trustDomain + path
	if _, err := spiffeid.FromString(id); err != nil {
		return "", fmt.Errorf("%q is not a SPIFFE ID: %w", id, err)
	}
	return id, nil
}

// ParseTemplate parses a SPIFFE ID template as Kuma's validator does, and
// allows only what a SPIFFE ID needs: text, {{ .Field }} and
// {{ label "key" }}. Anything else, such as a {{ range }} over a large
// number, could keep the webhook busy far past its timeout.
func ParseTemplate(tmpl string) error {
	_, err := compile(tmpl, func(string) (string, error) { return "", nil }, nil)
	return err
}

// The variables of each template, as Kuma gives them.
var (
	trustDomainFields = []string{"Mesh", "Zone"}
	pathFields        = []string{"TrustDomain", "Namespace", "ServiceAccount", "Workload"}
)

// compile parses a template of text, fields and labels; fields, when given,
// are the variables the template may use.
func compile(tmpl string, label func(string) (string, error), fields []string) (*template.Template, error) {
	t, err := template.New("").Funcs(template.FuncMap{"label": label}).Parse(tmpl)
	if err != nil {
		return nil, err
	}
	if t.Tree == nil || t.Tree.Root == nil {
		return t, nil
	}
	if len(t.Templates()) > 1 {
		return nil, errors.New(`only text, {{ .Field }} and {{ label "key" }} may be used`)
	}
	for _, n := range t.Tree.Root.Nodes {
		if !simpleNode(n) {
			return nil, fmt.Errorf(`%q: only text, {{ .Field }} and {{ label "key" }} may be used`, n.String())
		}
		if f := fieldOf(n); fields != nil && f != "" && !slices.Contains(fields, f) {
			return nil, fmt.Errorf("%s is not one of its variables .%s", n.String(), strings.Join(fields, ", ."))
		}
	}
	return t, nil
}

// fieldOf is the variable a simple node reads, or "".
func fieldOf(n parse.Node) string {
	if a, ok := n.(*parse.ActionNode); ok {
		if f, ok := a.Pipe.Cmds[0].Args[0].(*parse.FieldNode); ok {
			return f.Ident[0]
		}
	}
	return ""
}

// simpleNode tells whether a node is text, a field, or a label lookup.
func simpleNode(n parse.Node) bool {
	switch n := n.(type) {
	case *parse.TextNode:
		return true
	case *parse.ActionNode:
		if len(n.Pipe.Decl) > 0 || len(n.Pipe.Cmds) != 1 {
			return false
		}
		args := n.Pipe.Cmds[0].Args
		switch first := args[0].(type) {
		case *parse.FieldNode:
			return len(args) == 1 && len(first.Ident) == 1
		case *parse.IdentifierNode:
			if len(args) != 2 || first.Ident != "label" {
				return false
			}
			_, ok := args[1].(*parse.StringNode)
			return ok
		}
	}
	return false
}

// labelOf is Kuma's template function `label "key"` over labels: a missing
// label is an error.
func labelOf(labels map[string]string) func(string) (string, error) {
	return func(key string) (string, error) {
		v, ok := labels[key]
		if !ok {
			return "", fmt.Errorf("label %s not found", key)
		}
		return v, nil
	}
}

func render(tmpl string, label func(string) (string, error), fields []string, data any) (string, error) {
	t, err := compile(tmpl, label, fields)
	if err != nil {
		return "", fmt.Errorf("parsing the template: %w", err)
	}
	b := &boundedWriter{max: maxSpiffeIDLength}
	if err := t.Execute(b, data); err != nil {
		return "", fmt.Errorf("rendering the template: %w", err)
	}
	return b.String(), nil
}

// maxSpiffeIDLength is the longest SPIFFE ID, in bytes (the SPIFFE ID
// standard's limit for URIs); a template that renders more, such as a
// {{ range }} over a large number, is stopped there.
const maxSpiffeIDLength = 2048

// boundedWriter fails a write past max bytes.
type boundedWriter struct {
	strings.Builder
	max int
}

func (w *boundedWriter) Write(p []byte) (int, error) {
	if w.Len()+len(p) > w.max {
		return 0, fmt.Errorf("renders more than %d bytes", w.max)
	}
	return w.Builder.Write(p)
}
