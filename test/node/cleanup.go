//go:build linux

package node

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshcert/meshcert/internal/localcluster"
)

// Every node's files live in a root named rootPrefix*, so that a later run
// finds what a killed one left.
const rootPrefix = "meshcert-node-"

func rootGlob() string { return filepath.Join(os.TempDir(), rootPrefix+"*") }

// sysctlRecord holds the values of nodeSysctls before the first node
// changed them; a killed run leaves it for the next run to restore.
func sysctlRecord() string { return filepath.Join(os.TempDir(), "meshcert-node.sysctl.json") }

// nodeSysctls are the kernel settings that the kubelet, kube-proxy and the
// CNI bridge plugin change, under /proc/sys.
var nodeSysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv4/conf/all/route_localnet",
	"net/ipv6/conf/all/forwarding",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/netfilter/nf_conntrack_max",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// machineDirs are the folders the kubelet, containerd and the CNI plugins
// create outside the node's root.
var machineDirs = []string{"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni", "/run/containerd"}

// mountRoots are where the node mounts: the kubelet's volumes, containerd's
// root file systems and shim sockets, and the pods' network namespaces.
func mountRoots() []string {
	return []string{"/var/lib/kubelet/", filepath.Join(os.TempDir(), rootPrefix), "/run/containerd/", "/run/netns/cni-"}
}

// Cleanup removes what any run of a node left on this machine: its
// processes and its pods', mounts, network namespaces, the kubepods cgroups,
// the bridge, the KUBE-* and CNI-* iptables chains and the rules jumping to
// them, the sysctls it changed, and its folders. Start runs it first, for
// what a killed run left; Stop runs it last.
func Cleanup() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(killProcesses(nodeProcesses))
	add(killProcesses(podProcesses))
	add(unmountUnder(mountRoots()))
	add(removeNetns())
	add(removeCgroups())
	if _, err := os.Stat(filepath.Join("/sys/class/net", BridgeName)); err == nil {
		add(run("ip", "link", "delete", BridgeName))
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		add(removeChains(family))
	}
	add(removeEmptyTables())
	add(restoreSysctls())
	roots, err := filepath.Glob(rootGlob())
	add(err)
	for _, dir := range append(roots, machineDirs...) {
		add(removeUnmounted(dir))
	}
	return errors.Join(errs...)
}

// nodeProcesses are the node's daemons and containerd's shims, whose
// command lines name the node's root.
func nodeProcesses() ([]int, error) {
	pids, err := localcluster.ProcessesNaming(filepath.Join(os.TempDir(), rootPrefix))
	return slices.DeleteFunc(pids, zombie), err
}

// podProcesses are the processes in the kubepods cgroups.
func podProcesses() ([]int, error) {
	var pids []int
	for _, dir := range kubepodsCgroups() {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			procs, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, field := range strings.Fields(string(procs)) {
				if pid, err := strconv.Atoi(field); err == nil && !zombie(pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return pids, nil
}

// zombie says whether pid has exited but not been reaped: its parent may be
// an init that never reaps.
func zombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || len(stat) < i+3 || stat[i+2] == 'Z'
}

// killProcesses SIGKILLs what list finds until it finds nothing.
func killProcesses(list func() ([]int, error)) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids, err := list()
		if err != nil || len(pids) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v outlived SIGKILL", pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mountsUnder lists the mount points starting with any of prefixes, deepest
// first.
func mountsUnder(prefixes []string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountPath(fields[4])
		for _, p := range prefixes {
			if strings.HasPrefix(point, p) || point == strings.TrimSuffix(p, "/") {
				mounts = append(mounts, point)
				break
			}
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts, s.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes of space, tab, newline
// and backslash.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount under prefixes, stacked ones too.
func unmountUnder(prefixes []string) error {
	for range 10 {
		mounts, err := mountsUnder(prefixes)
		if err != nil || len(mounts) == 0 {
			return err
		}
		for _, m := range mounts {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	mounts, err := mountsUnder(prefixes)
	if err == nil && len(mounts) > 0 {
		err = fmt.Errorf("still mounted: %v", mounts)
	}
	return err
}

// removeUnmounted removes dir unless something is still mounted under it,
// which removing would reach through.
func removeUnmounted(dir string) error {
	mounts, err := mountsUnder([]string{dir + "/"})
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("not removing %s: still mounted under it: %v", dir, mounts)
	}
	return os.RemoveAll(dir)
}

// removeNetns removes the pods' network namespaces, which containerd names
// cni-*, and /run/netns if that leaves it empty.
func removeNetns() error {
	entries, err := filepath.Glob("/run/netns/cni-*")
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.Remove(e))
	}
	if rest, err := os.ReadDir("/run/netns"); err == nil && len(rest) == 0 {
		errs = append(errs, os.Remove("/run/netns"))
	}
	return errors.Join(errs...)
}

// AttackerCgroup is the cgroup, in every hierarchy, under which the tests
// make cgroups named like a pod's, outside the kubelet's.
const AttackerCgroup = "meshcert-node-attacker"

// kubepodsCgroups are the kubelet's kubepods cgroups in every hierarchy, and
// the tests' AttackerCgroup.
func kubepodsCgroups() []string {
	var dirs []string
	for _, name := range []string{"kubepods", AttackerCgroup} {
		found, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
		dirs = append(dirs, found...)
		if _, err := os.Stat("/sys/fs/cgroup/" + name); err == nil {
			dirs = append(dirs, "/sys/fs/cgroup/"+name)
		}
	}
	return dirs
}

// removeCgroups removes the kubepods cgroups, deepest first; a cgroup goes
// only once its last process has been reaped, so it retries a while.
func removeCgroups() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for _, root := range kubepodsCgroups() {
			var dirs []string
			_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
					left = append(left, dirs[i])
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups not removed: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// removeChains restores family's tables without the node's chains.
func removeChains(family string) error {
	saved, err := exec.Command(family + "-save").Output()
	if err != nil {
		return fmt.Errorf("%s-save: %w", family, err)
	}
	kept, changed := withoutNodeChains(saved)
	if !changed {
		return nil
	}
	restore := exec.Command(family + "-restore")
	restore.Stdin = bytes.NewReader(kept)
	if out, err := restore.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore: %v: %s", family, err, out)
	}
	return nil
}

// nodeChain says whether a chain is one of kube-proxy's, the kubelet's or
// the CNI plugins'.
func nodeChain(name string) bool {
	return strings.HasPrefix(name, "KUBE-") || strings.HasPrefix(name, "CNI-")
}

// withoutNodeChains drops from iptables-save output the node's chains, their
// rules, and every rule jumping to them; restoring the result replaces each
// table it names.
func withoutNodeChains(saved []byte) (kept []byte, changed bool) {
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(saved), "\n") {
		if dropRule(strings.TrimSpace(line)) {
			changed = true
			continue
		}
		out.WriteString(line)
	}
	return out.Bytes(), changed
}

func dropRule(line string) bool {
	if strings.HasPrefix(line, ":") {
		return nodeChain(strings.TrimPrefix(line, ":"))
	}
	if !strings.HasPrefix(line, "-A ") {
		return false
	}
	fields := strings.Fields(line)
	if nodeChain(fields[1]) {
		return true
	}
	for i, f := range fields[:len(fields)-1] {
		if (f == "-j" || f == "-g" || f == "--jump" || f == "--goto") && nodeChain(fields[i+1]) {
			return true
		}
	}
	return false
}

// iptablesTables are the nftables tables that iptables-nft creates on first
// use and never deletes.
var iptablesTables = map[string]bool{"filter": true, "nat": true, "mangle": true, "raw": true, "security": true}

// removeEmptyTables deletes iptables-nft's tables in which nothing is left
// but accepting base chains.
func removeEmptyTables() error {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return fmt.Errorf("nft list tables: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) != 3 || fields[0] != "table" || (fields[1] != "ip" && fields[1] != "ip6") || !iptablesTables[fields[2]] {
			continue
		}
		listing, err := exec.Command("nft", "list", "table", fields[1], fields[2]).Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("nft list table %s %s: %w", fields[1], fields[2], err))
			continue
		}
		if emptyTable(string(listing)) {
			errs = append(errs, run("nft", "delete", "table", fields[1], fields[2]))
		}
	}
	return errors.Join(errs...)
}

// emptyTable says whether an `nft list table` listing holds no rule, set or
// map, and only base chains whose policy is accept.
func emptyTable(listing string) bool {
	for _, line := range strings.Split(listing, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "", line == "}", strings.HasPrefix(line, "table "), strings.HasPrefix(line, "chain ") && strings.HasSuffix(line, "{"):
		case strings.HasPrefix(line, "type ") && strings.HasSuffix(line, "policy accept;"):
		default:
			return false
		}
	}
	return true
}

// recordSysctls saves nodeSysctls' values, unless a killed run's record of
// the values before it is still there.
func recordSysctls() error {
	if _, err := os.Stat(sysctlRecord()); err == nil {
		return nil
	}
	values := map[string]string{}
	for _, name := range nodeSysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", name)); err == nil {
			values[name] = strings.TrimSpace(string(b))
		}
	}
	b, err := json.Marshal(values)
	if err != nil {
		return err
	}
	return os.WriteFile(sysctlRecord(), b, 0o600)
}

// restoreSysctls writes back the recorded values and removes the record.
func restoreSysctls() error {
	b, err := os.ReadFile(sysctlRecord())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var values map[string]string
	if err := json.Unmarshal(b, &values); err != nil {
		return fmt.Errorf("reading %s: %w", sysctlRecord(), err)
	}
	var errs []error
	for name, value := range values {
		path := filepath.Join("/proc/sys", name)
		if current, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(current)) == value {
			continue
		}
		errs = append(errs, os.WriteFile(path, []byte(value), 0o644))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.Remove(sysctlRecord())
}
