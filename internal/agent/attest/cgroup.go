// Package attest tells who is calling the node agent's socket, from the
// kernel's word rather than the caller's: the peer's credentials, its
// process's start time, and the pod and container its cgroup names.
package attest

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// Workload is the pod and container a process runs in, as its cgroup names
// them.
type Workload struct {
	PodUID      string
	ContainerID string
}

// DefaultKubeletCgroupRoot is the kubelet's default --cgroup-root: its
// kubepods cgroup sits at the top of each hierarchy.
const DefaultKubeletCgroupRoot = "/"

const maxCgroupFileLen = 64 << 10

var (
	// A pod's UID in its cgroup's name: with dashes (cgroupfs) or
	// underscores (systemd), or the 32 hex digits of a static pod's hash.
	podUID = `([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})`
	// A container's cgroup: its bare ID, or CRI-O's crio-<ID> (cgroupfs); a
	// systemd scope of containerd, CRI-O or Docker. CRI-O's conmon scope
	// (crio-conmon-<ID>) is the runtime's monitor, no container.
	cgroupfsContainer = regexp.MustCompile(`^(?:crio-)?([0-9a-f]{64})$`)
	systemdContainer  = regexp.MustCompile(`^(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope$`)
	// Anything that looks like a pod's or the kubelet's cgroup: where it is
	// not where the kubelet puts them, someone else made it.
	podLike = regexp.MustCompile(`kubepods|pod` + podUID)
	qosDirs = []string{"", "besteffort", "burstable"}
)

// position is one segment of the path the kubelet gives a container's
// cgroup: a fixed name, the pod's cgroup, or the container's.
type position struct {
	name      string
	pod       *regexp.Regexp
	container *regexp.Regexp
}

// layout is the whole path of a container's cgroup, for one cgroup driver
// and QoS class; its last two positions are the pod and the container.
type layout []position

// kubeletLayouts are the paths the kubelet, with its cgroup root root, gives
// containers: cgroupfs /<root>/kubepods[/<qos>]/pod<uid>/<id>, and systemd
// the same names as nested slices (root components, then kubepods, then the
// QoS class, each slice named after its parents, "-" escaped to "_" as the
// kubelet's ToSystemd does), for Guaranteed, BestEffort and Burstable pods.
func kubeletLayouts(root string) []layout {
	var components []string
	for _, c := range strings.Split(root, "/") {
		if c != "" {
			components = append(components, c)
		}
	}
	var layouts []layout
	for _, qos := range qosDirs {
		var fs, sd layout
		for _, c := range components {
			fs = append(fs, position{name: c})
		}
		fs = append(fs, position{name: "kubepods"})
		var slice []string
		for _, c := range append(components, "kubepods") {
			slice = append(slice, strings.ReplaceAll(c, "-", "_"))
			sd = append(sd, position{name: strings.Join(slice, "-") + ".slice"})
		}
		if qos != "" {
			fs = append(fs, position{name: qos})
			slice = append(slice, qos)
			sd = append(sd, position{name: strings.Join(slice, "-") + ".slice"})
		}
		fs = append(fs, position{pod: regexp.MustCompile(`^pod` + podUID + `$`)}, position{container: cgroupfsContainer})
		sd = append(sd, position{pod: regexp.MustCompile(`^` + regexp.QuoteMeta(strings.Join(slice, "-")) + `-pod` + podUID + `\.slice$`)},
			position{container: systemdContainer})
		layouts = append(layouts, fs, sd)
	}
	return layouts
}

// match matches segments to the layout from position start on. uid and id
// are what the pod's and container's segments hold; complete is whether the
// segments end at the container, else they end at the pod.
func (l layout) match(segments []string, start int) (uid, id string, complete, ok bool) {
	if len(segments) == 0 || start+len(segments) > len(l) {
		return "", "", false, false
	}
	for i, seg := range segments {
		p := l[start+i]
		switch {
		case p.pod != nil:
			m := p.pod.FindStringSubmatch(seg)
			if m == nil {
				return "", "", false, false
			}
			uid = strings.ReplaceAll(m[1], "_", "-")
		case p.container != nil:
			m := p.container.FindStringSubmatch(seg)
			if m == nil {
				return "", "", false, false
			}
			id = m[1]
		case seg != p.name:
			return "", "", false, false
		}
	}
	end := start + len(segments)
	return uid, id, end == len(l), end == len(l) || end == len(l)-1
}

// ParseCgroup reads a /proc/<pid>/cgroup file, of cgroup v1 (a line per
// hierarchy) or v2 (the one line 0::<path>), and returns the pod and
// container its paths name, where kubeletRoot is the kubelet's cgroup root.
// ok is false for a process outside any pod, such as a host process.
//
// A path names a container only where the kubelet puts one: the whole path
// is a kubelet layout (kubeletLayouts), or, read from another cgroup
// namespace, ".." segments and then the rest of such a layout, from any of
// its cgroups down to the container (the ".."s climb the reader's own
// ancestry, which only root writes). A pod's cgroup anywhere else, one
// without a container below it, a static pod's, or paths that name
// different pods or containers, is an error, never a guess.
func ParseCgroup(content []byte, kubeletRoot string) (w Workload, ok bool, err error) {
	if len(content) > maxCgroupFileLen {
		return Workload{}, false, fmt.Errorf("cgroup file of %d bytes, over the %d a kernel writes", len(content), maxCgroupFileLen)
	}
	layouts := kubeletLayouts(kubeletRoot)
	sc := bufio.NewScanner(bytes.NewReader(content))
	sc.Buffer(make([]byte, 0, 4096), maxCgroupFileLen)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		// hierarchy-ID:controller-list:cgroup-path; the path may hold colons.
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			return Workload{}, false, fmt.Errorf("line %d: %q is not hierarchy-ID:controllers:path", n, line)
		}
		got, found, err := workloadOfPath(parts[2], layouts)
		if err != nil {
			return Workload{}, false, fmt.Errorf("line %d: %w", n, err)
		}
		switch {
		case !found:
		case !ok:
			w, ok = got, true
		case got.PodUID != w.PodUID:
			return Workload{}, false, fmt.Errorf("line %d: pod %s, where another line names pod %s", n, got.PodUID, w.PodUID)
		case got.ContainerID != w.ContainerID:
			return Workload{}, false, fmt.Errorf("line %d: container %s, where another line names container %s", n, got.ContainerID, w.ContainerID)
		}
	}
	if err := sc.Err(); err != nil {
		return Workload{}, false, err
	}
	return w, ok, nil
}

// workloadOfPath returns the pod and container one cgroup path names; found
// is false for a path that names no pod at all.
func workloadOfPath(path string, layouts []layout) (Workload, bool, error) {
	segments := strings.Split(strings.TrimPrefix(path, "/"), "/")
	up := 0
	for up < len(segments) && segments[up] == ".." {
		up++
	}
	rest := segments[up:]
	for _, l := range layouts {
		// From the top of the kubelet's layout, or, below ".."s, from any
		// of its cgroups down to the pod's.
		starts := 1
		if up > 0 {
			starts = len(l) - 1
		}
		for start := range starts {
			uid, id, complete, ok := l.match(rest, start)
			switch {
			case !ok:
				continue
			case !strings.Contains(uid, "-"):
				return Workload{}, false, fmt.Errorf("%s is the cgroup of a static pod (%s), whose mirror Pod has another UID: a static pod gets no identity", path, uid)
			case !complete:
				return Workload{}, false, fmt.Errorf("%s is pod %s's own cgroup, no container's", path, uid)
			}
			return Workload{PodUID: uid, ContainerID: id}, true, nil
		}
	}
	if podLike.MatchString(path) {
		return Workload{}, false, fmt.Errorf("%s names a pod, but not where the kubelet puts a pod's containers", path)
	}
	return Workload{}, false, nil
}
