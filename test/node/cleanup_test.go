//go:build linux

package node

import "testing"

func TestWithoutNodeChains(t *testing.T) {
	tests := map[string]struct {
		saved   string
		want    string
		changed bool
	}{
		"kube-proxy's chains, their rules and the jumps to them": {
			saved: `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -d 192.0.2.1/32 -j ACCEPT
-A KUBE-SERVICES -d 10.204.0.1/32 -p tcp -j KUBE-SVC-NPX46M4PTMTKRN6Y
COMMIT
*filter
:INPUT ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A INPUT -g CNI-HOSTPORT-DNAT
COMMIT
`,
			want: `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -d 192.0.2.1/32 -j ACCEPT
COMMIT
*filter
:INPUT ACCEPT [0:0]
COMMIT
`,
			changed: true,
		},
		"nothing of the node's": {
			saved:   "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"-j KUBE-X\" -j ACCEPT\nCOMMIT\n",
			want:    "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"-j KUBE-X\" -j ACCEPT\nCOMMIT\n",
			changed: false,
		},
		"a chain whose name only contains KUBE-": {
			saved:   "*filter\n:MY-KUBE-CHAIN - [0:0]\n-A INPUT -j MY-KUBE-CHAIN\nCOMMIT\n",
			want:    "*filter\n:MY-KUBE-CHAIN - [0:0]\n-A INPUT -j MY-KUBE-CHAIN\nCOMMIT\n",
			changed: false,
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			got, changed := withoutNodeChains([]byte(test.saved))
			if string(got) != test.want || changed != test.changed {
				t.Errorf("got (changed %v):\n%s\nwant (changed %v):\n%s", changed, got, test.changed, test.want)
			}
		})
	}
}

func TestEmptyTable(t *testing.T) {
	tests := map[string]struct {
		listing string
		want    bool
	}{
		"base chains accepting": {
			listing: "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n",
			want:    true,
		},
		"a rule": {
			listing: "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr 192.0.2.1 drop\n\t}\n}\n",
			want:    false,
		},
		"a dropping policy": {
			listing: "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n",
			want:    false,
		},
		"a set": {
			listing: "table ip filter {\n\tset blocked {\n\t\ttype ipv4_addr\n\t}\n}\n",
			want:    false,
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			if got := emptyTable(test.listing); got != test.want {
				t.Errorf("emptyTable = %v, want %v", got, test.want)
			}
		})
	}
}

func TestUnescapeMountPath(t *testing.T) {
	tests := map[string]struct {
		in, want string
	}{
		"plain":             {in: "/var/lib/kubelet/pods", want: "/var/lib/kubelet/pods"},
		"a space":           {in: `/var/lib/kubelet/a\040b`, want: "/var/lib/kubelet/a b"},
		"a trailing slash":  {in: `/x\`, want: `/x\`},
		"not octal":         {in: `/x\09z`, want: `/x\09z`},
		"backslash escaped": {in: `/x\134y`, want: `/x\y`},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			if got := unescapeMountPath(test.in); got != test.want {
				t.Errorf("unescapeMountPath(%q) = %q, want %q", test.in, got, test.want)
			}
		})
	}
}
