package chart

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	meshcertchart "github.com/meshcert/meshcert/charts/meshcert"
)

// kumaCRDs, when set, names a folder of Kuma's own CRD files from which
// -update rewrites the expected shapes under test/testdata/kuma-crds.
var (
	kumaCRDs = flag.String("kuma-crds", "", "a folder of Kuma's CRD files, to rewrite the expected shapes from with -update")
	update   = flag.Bool("update", false, "rewrite test/testdata/kuma-crds from -kuma-crds")
)

// TestKumaCRDs holds each Kuma-compatible CRD the chart ships against the
// shape of Kuma v2.14.3's own (deployments/charts/kuma/crds), as a user or a
// client sees it: names, scope, short names, categories, printer columns,
// subresources, and every schema path with its type, enum, bounds, required
// fields and where unknown fields are kept.
func TestKumaCRDs(t *testing.T) {
	files, err := meshcertchart.KumaCRDFiles()
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]string{}
	for _, f := range files {
		crd := decodeCRD(t, f)
		ours[crd.Name] = crdShape(crd)
	}
	want := map[string]struct {
		shortNames []string
		scope      apiextensionsv1.ResourceScope
	}{
		"meshes.kuma.io":         {shortNames: []string{"m"}, scope: apiextensionsv1.ClusterScoped},
		"dataplanes.kuma.io":     {shortNames: []string{"dp"}, scope: apiextensionsv1.NamespaceScoped},
		"meshidentities.kuma.io": {shortNames: []string{"mid"}, scope: apiextensionsv1.NamespaceScoped},
		"meshtrusts.kuma.io":     {shortNames: []string{"mtrust"}, scope: apiextensionsv1.NamespaceScoped},
	}
	if len(ours) != len(want) {
		t.Errorf("the chart ships %d Kuma CRDs, want %d", len(ours), len(want))
	}
	dir := filepath.Join("..", "testdata", "kuma-crds")
	if *update {
		if *kumaCRDs == "" {
			t.Fatal("-update needs -kuma-crds, a folder of Kuma's CRD files")
		}
		for name := range want {
			b, err := os.ReadFile(filepath.Join(*kumaCRDs, "kuma.io_"+strings.TrimSuffix(name, ".kuma.io")+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			header := "# The shape of Kuma v2.14.3's CRD " + name + ", from deployments/charts/kuma/crds.\n"
			if err := os.WriteFile(filepath.Join(dir, name+".txt"), []byte(header+crdShape(decodeCRD(t, b))), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, tc := range want {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, name+".txt"))
			if err != nil {
				t.Fatal(err)
			}
			kuma := string(b[strings.IndexByte(string(b), '\n')+1:])
			if diff := cmp.Diff(kuma, ours[name]); diff != "" {
				t.Errorf("differs from Kuma's (-kuma +ours):\n%s", diff)
			}
			// The facts of FACTS.md §5, apart from the recorded shape.
			if !strings.Contains(ours[name], fmt.Sprintf("scope: %s\n", tc.scope)) ||
				!strings.Contains(ours[name], fmt.Sprintf("shortNames: %v\n", tc.shortNames)) ||
				!strings.Contains(ours[name], "categories: [kuma]\n") {
				t.Errorf("scope, short names or categories are not %s %v [kuma]:\n%s", tc.scope, tc.shortNames, ours[name])
			}
		})
	}
}

func decodeCRD(t *testing.T, b []byte) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(b, crd); err != nil {
		t.Fatal(err)
	}
	return crd
}

// crdShape writes out what a user or client sees of a CRD, without its
// descriptions, one fact a line, in a stable order.
func crdShape(crd *apiextensionsv1.CustomResourceDefinition) string {
	var b strings.Builder
	n := crd.Spec.Names
	fmt.Fprintf(&b, "group: %s\nkind: %s\nlistKind: %s\nplural: %s\nsingular: %s\nshortNames: %v\ncategories: %v\nscope: %s\n",
		crd.Spec.Group, n.Kind, n.ListKind, n.Plural, n.Singular, n.ShortNames, n.Categories, crd.Spec.Scope)
	for _, v := range crd.Spec.Versions {
		fmt.Fprintf(&b, "version %s: served=%v storage=%v\n", v.Name, v.Served, v.Storage)
		for _, c := range v.AdditionalPrinterColumns {
			fmt.Fprintf(&b, "  column %q %s %s priority=%d\n", c.Name, c.Type, c.JSONPath, c.Priority)
		}
		switch {
		case v.Subresources == nil:
			b.WriteString("  subresources: none\n")
		default:
			fmt.Fprintf(&b, "  subresources: status=%v scale=%v\n", v.Subresources.Status != nil, v.Subresources.Scale != nil)
		}
		if v.Schema != nil && v.Schema.OpenAPIV3Schema != nil {
			var lines []string
			schemaPaths("", *v.Schema.OpenAPIV3Schema, &lines)
			sort.Strings(lines)
			for _, l := range lines {
				b.WriteString("  " + l + "\n")
			}
		}
	}
	return b.String()
}

func schemaPaths(path string, s apiextensionsv1.JSONSchemaProps, out *[]string) {
	var facts []string
	add := func(format string, args ...any) { facts = append(facts, fmt.Sprintf(format, args...)) }
	if s.Type != "" {
		add("type=%s", s.Type)
	}
	if len(s.Enum) > 0 {
		var values []string
		for _, e := range s.Enum {
			values = append(values, string(e.Raw))
		}
		add("enum=%s", strings.Join(values, ","))
	}
	if len(s.Required) > 0 {
		required := slices.Clone(s.Required)
		slices.Sort(required)
		add("required=%s", strings.Join(required, ","))
	}
	if s.XPreserveUnknownFields != nil && *s.XPreserveUnknownFields {
		add("preserve-unknown-fields")
	}
	if s.MaxLength != nil {
		add("maxLength=%d", *s.MaxLength)
	}
	if s.MinLength != nil {
		add("minLength=%d", *s.MinLength)
	}
	if s.MinItems != nil {
		add("minItems=%d", *s.MinItems)
	}
	if s.Pattern != "" {
		add("pattern=%s", s.Pattern)
	}
	if s.Default != nil {
		add("default=%s", s.Default.Raw)
	}
	if s.XListType != nil {
		add("listType=%s", *s.XListType)
	}
	if len(s.XListMapKeys) > 0 {
		add("listMapKeys=%s", strings.Join(s.XListMapKeys, ","))
	}
	name := path
	if name == "" {
		name = "."
	}
	*out = append(*out, name+": "+strings.Join(facts, " "))
	for key, p := range s.Properties {
		schemaPaths(path+"."+key, p, out)
	}
	if s.Items != nil && s.Items.Schema != nil {
		schemaPaths(path+"[]", *s.Items.Schema, out)
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		schemaPaths(path+"{}", *s.AdditionalProperties.Schema, out)
	}
}
