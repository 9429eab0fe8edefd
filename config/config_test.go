package config

import (
	"crypto/tls"
	"io"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := map[string]struct {
		args    []string
		env     map[string]string
		check   func(t *testing.T, c Config)
		wantErr string
	}{
		"defaults": {
			check: func(t *testing.T, c Config) {
				if c.SystemNamespace != "kong-mesh-system" || c.WebhookPort != 9443 || c.TLSMinVersion != tls.VersionTLS12 ||
					c.EnableHTTP2 || !c.WebhookEnabled || c.LeaderElectionNamespace != "kong-mesh-system" {
					t.Errorf("unexpected defaults: %+v", c)
				}
			},
		},
		"flags": {
			args: []string{"--system-namespace=kuma-system", "--tls-min-version=1.3", "--webhook-port=10250", "--dev"},
			check: func(t *testing.T, c Config) {
				if c.SystemNamespace != "kuma-system" || c.TLSMinVersion != tls.VersionTLS13 || c.WebhookPort != 10250 || !c.Dev {
					t.Errorf("flags not applied: %+v", c)
				}
				if c.LeaderElectionNamespace != "kuma-system" {
					t.Errorf("leader election namespace %q, want the system namespace", c.LeaderElectionNamespace)
				}
			},
		},
		"request annotations": {
			args: []string{"--certificate-request-annotations=policy.example.com/team=payments, tier=gold"},
			check: func(t *testing.T, c Config) {
				if len(c.CertificateRequestAnnotations) != 2 || c.CertificateRequestAnnotations["policy.example.com/team"] != "payments" || c.CertificateRequestAnnotations["tier"] != "gold" {
					t.Errorf("annotations %v", c.CertificateRequestAnnotations)
				}
			},
		},
		"a request annotation that is not key=value": {
			args:    []string{"--certificate-request-annotations=tier"},
			wantErr: `--certificate-request-annotations: "tier" is not key=value`,
		},
		"a request annotation key that is not a name": {
			args:    []string{"--certificate-request-annotations=bad key=x"},
			wantErr: `--certificate-request-annotations: key "bad key"`,
		},
		"more key algorithms": {
			args: []string{"--key-algorithm=ed25519", "--zone=east"},
			check: func(t *testing.T, c Config) {
				if c.KeyAlgorithm != "ed25519" || c.Zone != "east" {
					t.Errorf("key algorithm %q, zone %q", c.KeyAlgorithm, c.Zone)
				}
			},
		},
		"an unknown key algorithm": {
			args:    []string{"--key-algorithm=dsa"},
			wantErr: "must be one of ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096",
		},
		"environment": {
			env: map[string]string{"MESHCERT_SYSTEM_NAMESPACE": "kuma-system", "MESHCERT_ENABLE_HTTP2": "true"},
			check: func(t *testing.T, c Config) {
				if c.SystemNamespace != "kuma-system" || !c.EnableHTTP2 {
					t.Errorf("environment not applied: %+v", c)
				}
			},
		},
		"a flag wins over its variable": {
			args: []string{"--system-namespace=from-flag"},
			env:  map[string]string{"MESHCERT_SYSTEM_NAMESPACE": "from-env"},
			check: func(t *testing.T, c Config) {
				if c.SystemNamespace != "from-flag" {
					t.Errorf("system namespace %q, want from-flag", c.SystemNamespace)
				}
			},
		},
		"nothing to run": {
			args:    []string{"--enable-webhook=false", "--enable-reconciler=false"},
			wantErr: "--enable-webhook and --enable-reconciler are both false and --approve-agents-of is empty: there is nothing to run",
		},
		"only the agents' approver": {
			args: []string{"--enable-webhook=false", "--enable-reconciler=false", "--approve-agents-of=kong-mesh-system/meshcert-agent"},
			check: func(t *testing.T, c Config) {
				if c.WebhookEnabled || c.ReconcilerEnabled || c.ApproveAgentsOf != "kong-mesh-system/meshcert-agent" {
					t.Errorf("not the approver alone: %+v", c)
				}
			},
		},
		"bad TLS version":        {args: []string{"--tls-min-version=1.1"}, wantErr: `invalid --tls-min-version "1.1": must be 1.2 or 1.3`},
		"negative in-flight cap": {args: []string{"--max-requests-in-flight=-1"}, wantErr: `invalid --max-requests-in-flight "-1": must not be negative; 0 is no limit`},
		"bad port":               {args: []string{"--webhook-port=0"}, wantErr: `invalid --webhook-port "0": must be between 1 and 65535`},
		"bad namespace":          {args: []string{"--system-namespace=Kong_Mesh"}, wantErr: `invalid --system-namespace "Kong_Mesh": a lowercase RFC 1123 label`},
		"bad metrics address":    {args: []string{"--metrics-bind-address=8080"}, wantErr: `invalid --metrics-bind-address "8080": must be host:port, :port, or 0 to turn it off`},
		"bad env value":          {env: map[string]string{"MESHCERT_WEBHOOK_PORT": "many"}, wantErr: `invalid MESHCERT_WEBHOOK_PORT="many" (--webhook-port)`},
		"unknown flag":           {args: []string{"--no-such-flag"}, wantErr: "flag provided but not defined: -no-such-flag"},
		"positional argument":    {args: []string{"serve"}, wantErr: `unexpected argument "serve"`},
		"several errors at once": {args: []string{"--webhook-port=0", "--log-level=-1"}, wantErr: "invalid --webhook-port \"0\": must be between 1 and 65535\ninvalid --log-level \"-1\": must not be negative"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := Parse(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestEnvVar(t *testing.T) {
	if got := EnvVar("health-probe-bind-address"); got != "MESHCERT_HEALTH_PROBE_BIND_ADDRESS" {
		t.Errorf("EnvVar = %q", got)
	}
}
