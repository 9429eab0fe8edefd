package check

import (
	"context"
	"fmt"
	"io"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshcert/meshcert/internal/kuma"
)

// Options are `meshcert check`'s flags.
type Options struct {
	// Kubeconfig and Context choose the cluster, as kubectl's flags do.
	Kubeconfig, Context        string
	Namespace, SystemNamespace string
	ClusterResourceNamespace   string
	Zone                       string
	// Output is OutputText or OutputJSON.
	Output string
	// Workload, <namespace>/<pod>, checks that pod instead of the cluster.
	Workload string
	// Mesh checks that mesh's identities and backends, and its move to
	// MeshIdentity, instead of the cluster.
	Mesh string
}

// Run checks the cluster, or one workload, and writes the report to out. It
// returns the report; an error means the checks could not run at all.
func Run(ctx context.Context, o Options, out io.Writer) (*Report, error) {
	if o.Output != OutputText && o.Output != OutputJSON {
		return nil, fmt.Errorf("-o must be %s or %s, not %q", OutputText, OutputJSON, o.Output)
	}
	var pod types.NamespacedName
	if o.Workload != "" {
		ns, name, ok := strings.Cut(o.Workload, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("name the workload as <namespace>/<pod>, not %q", o.Workload)
		}
		pod = types.NamespacedName{Namespace: ns, Name: name}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	restConfig, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.Context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig: %w", err)
	}
	c, err := client.New(restConfig, client.Options{Scheme: Scheme()})
	if err != nil {
		return nil, err
	}
	checker := &Checker{
		Client: c, Namespace: o.Namespace, SystemNamespace: o.SystemNamespace,
		ClusterResourceNamespace: o.ClusterResourceNamespace, Zone: o.Zone, Mesh: o.Mesh, Clock: clock.RealClock{},
	}
	report := &Report{}
	switch {
	case o.Workload != "":
		err = checker.Workload(ctx, report, pod)
	case o.Mesh != "":
		err = checker.Identities(ctx, report)
	default:
		err = checker.All(ctx, report)
	}
	if err != nil {
		return nil, err
	}
	return report, report.Write(out, o.Output)
}

// All runs the install's checks, then those of every identity and backend.
func (c *Checker) All(ctx context.Context, r *Report) error {
	if err := c.Install(ctx, r); err != nil {
		return err
	}
	return c.Identities(ctx, r)
}

// Scheme holds every type the checks read.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(apiextensionsv1.AddToScheme(s))
	utilruntime.Must(cmapi.AddToScheme(s))
	utilruntime.Must(kuma.AddToScheme(s))
	return s
}
