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

var (
	// The cgroupfs driver names a pod's cgroup pod<uid>; the systemd driver
	// kubepods[-<qos>]-pod<uid with underscores>.slice, under a prefix when
	// the kubelet's cgroup root is not the top (kind's kubelet-kubepods-...).
	cgroupfsPod = regexp.MustCompile(`^pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$`)
	systemdPod  = regexp.MustCompile(`^(?:[a-z0-9]+-)*kubepods-(?:[a-z]+-)?pod([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})\.slice$`)
	// A container's cgroup: its bare ID (cgroupfs), or a systemd scope of
	// containerd, CRI-O or Docker.
	bareContainer    = regexp.MustCompile(`^([0-9a-f]{64})$`)
	scopedContainer  = regexp.MustCompile(`^(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope$`)
	maxCgroupFileLen = 64 << 10
)

// ParseCgroup reads a /proc/<pid>/cgroup file, of cgroup v1 (a line per
// hierarchy) or v2 (the one line 0::<path>), and returns the pod and
// container its paths name. ok is false for a process outside any pod, such
// as a host process. Paths that name different pods or containers are an
// error, never a guess.
func ParseCgroup(content []byte) (w Workload, ok bool, err error) {
	if len(content) > maxCgroupFileLen {
		return Workload{}, false, fmt.Errorf("cgroup file of %d bytes, over the %d a kernel writes", len(content), maxCgroupFileLen)
	}
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
		got, found := workloadOfPath(parts[2])
		if !found {
			continue
		}
		switch {
		case !ok:
			w, ok = got, true
		case got.PodUID != w.PodUID:
			return Workload{}, false, fmt.Errorf("line %d: pod %s, where another line names pod %s", n, got.PodUID, w.PodUID)
		case got.ContainerID != "" && w.ContainerID != "" && got.ContainerID != w.ContainerID:
			return Workload{}, false, fmt.Errorf("line %d: container %s, where another line names container %s", n, got.ContainerID, w.ContainerID)
		case w.ContainerID == "":
			w.ContainerID = got.ContainerID
		}
	}
	if err := sc.Err(); err != nil {
		return Workload{}, false, err
	}
	return w, ok, nil
}

// workloadOfPath finds the pod segment of a cgroup path, and the container
// segment right below it. Anything above the pod (a kind node's own
// container, or ".." when the reader is in another cgroup namespace) is
// ignored.
func workloadOfPath(path string) (Workload, bool) {
	segments := strings.Split(path, "/")
	for i, seg := range segments {
		var uid string
		if m := cgroupfsPod.FindStringSubmatch(seg); m != nil {
			uid = m[1]
		} else if m := systemdPod.FindStringSubmatch(seg); m != nil {
			uid = strings.ReplaceAll(m[1], "_", "-")
		} else {
			continue
		}
		w := Workload{PodUID: uid}
		if i+1 < len(segments) {
			next := segments[i+1]
			if m := bareContainer.FindStringSubmatch(next); m != nil {
				w.ContainerID = m[1]
			} else if m := scopedContainer.FindStringSubmatch(next); m != nil {
				w.ContainerID = m[1]
			}
		}
		return w, true
	}
	return Workload{}, false
}
