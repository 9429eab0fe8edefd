package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseAgent(t *testing.T) {
	tests := map[string]struct {
		args    []string
		env     map[string]string
		check   func(t *testing.T, c AgentConfig)
		wantErr []string
	}{
		"defaults, the node from the environment": {
			env: map[string]string{"MESHCERT_NODE_NAME": "node-a"},
			check: func(t *testing.T, c AgentConfig) {
				if c.NodeName != "node-a" || c.Socket != DefaultAgentSocket || c.Attestor != AttestorKubernetes || c.ProcRoot != "/proc" || c.KubeletCgroupRoot != "/" ||
					c.KeyAlgorithm != "ecdsa-p256" || c.SystemNamespace != "kong-mesh-system" || c.MetricsAddr != "0" || c.PprofAddr != "0" ||
					c.MaxRequestBytes != 64<<10 || c.MaxStreamsPerConnection != 100 || c.MaxCallsPerCaller != 32 || c.MaxResourceNames != 64 ||
					c.MaxConnections != 2048 || c.MaxConnectionsPerCaller != 64 || c.AttestationWait != 10*time.Second {
					t.Errorf("unexpected defaults: %+v", c)
				}
			},
		},
		"flags": {
			args: []string{"--node-name=vm-1", "--attestor=unix", "--socket=/tmp/agent/socket", "--key-algorithm=rsa-2048", "--certificate-request-annotations=team=billing", "--kubelet-cgroup-root=/kubelet"},
			check: func(t *testing.T, c AgentConfig) {
				if c.NodeName != "vm-1" || c.Attestor != AttestorUnix || c.Socket != "/tmp/agent/socket" || c.KeyAlgorithm != "rsa-2048" || c.KubeletCgroupRoot != "/kubelet" ||
					c.CertificateRequestAnnotations["team"] != "billing" {
					t.Errorf("flags not applied: %+v", c)
				}
			},
		},
		"every problem at once": {
			args: []string{"--attestor=docker", "--socket=agent.sock", "--proc-root=proc", "--key-algorithm=dsa", "--request-timeout=0s", "--zone=Zone_1", "--pprof-bind-address=6060"},
			wantErr: []string{
				"--node-name is required (or MESHCERT_NODE_NAME)",
				`invalid --attestor "docker": must be kubernetes or unix`,
				`invalid --socket "agent.sock": must be an absolute path`,
				`invalid --proc-root "proc": must be an absolute path`,
				`invalid --pprof-bind-address "6060": must be host:port, :port, or 0 to turn it off`,
				`invalid --key-algorithm "dsa": must be one of ecdsa-p256`,
				`invalid --request-timeout "0s": must be positive`,
				`invalid --zone "Zone_1"`,
			},
		},
		"limits": {
			args: []string{"--node-name=a", "--max-request-bytes=4096", "--max-streams-per-connection=8", "--max-calls-per-caller=16", "--max-resource-names=4"},
			check: func(t *testing.T, c AgentConfig) {
				if c.MaxRequestBytes != 4096 || c.MaxStreamsPerConnection != 8 || c.MaxCallsPerCaller != 16 || c.MaxResourceNames != 4 {
					t.Errorf("limits not applied: %+v", c)
				}
			},
		},
		"limits that allow nothing": {
			args: []string{"--node-name=a", "--max-request-bytes=0", "--max-streams-per-connection=-1", "--max-calls-per-caller=0", "--max-resource-names=0"},
			wantErr: []string{
				`invalid --max-request-bytes "0": must be positive`,
				`invalid --max-streams-per-connection "-1": must be positive`,
				`invalid --max-calls-per-caller "0": must be positive`,
				`invalid --max-resource-names "0": must be positive`,
			},
		},
		"more streams per connection than HTTP/2 can say": {
			args:    []string{"--node-name=a", "--max-streams-per-connection=4294967296"},
			wantErr: []string{`invalid --max-streams-per-connection "4294967296": must fit HTTP/2's 32 bits`},
		},
		"a node name that is no DNS name": {args: []string{"--node-name=Node A"}, wantErr: []string{`invalid --node-name "Node A"`}},
		"a kubelet cgroup root that is not a clean absolute path": {
			args: []string{"--node-name=a", "--kubelet-cgroup-root=kubelet/../x"}, wantErr: []string{`invalid --kubelet-cgroup-root "kubelet/../x": must be an absolute, clean cgroup path`},
		},
		"a kubelet cgroup root that climbs": {args: []string{"--node-name=a", "--kubelet-cgroup-root=/.."}, wantErr: []string{`invalid --kubelet-cgroup-root "/.."`}},
		"an attestation wait out of range": {
			args: []string{"--node-name=a", "--attestation-wait=2m"}, wantErr: []string{`invalid --attestation-wait "2m0s": must be between 0 and 1m`},
		},
		"no attestation wait": {
			args: []string{"--node-name=a", "--attestation-wait=0s"},
			check: func(t *testing.T, c AgentConfig) {
				if c.AttestationWait != 0 {
					t.Errorf("AttestationWait %s, want 0", c.AttestationWait)
				}
			},
		},
		"an argument": {args: []string{"--node-name=a", "serve"}, wantErr: []string{`unexpected argument "serve": meshcert agent takes only flags`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := ParseAgent(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			if len(tc.wantErr) > 0 {
				for _, want := range tc.wantErr {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Errorf("err = %v, want it to contain %q", err, want)
					}
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
