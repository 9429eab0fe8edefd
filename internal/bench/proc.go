package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// residentSet is a process's resident memory, in bytes: all of it, its
// anonymous pages (the Go heap, stacks and runtime) and its file-backed
// pages (the binary's code and data that were read).
type residentSet struct{ total, anon, file uint64 }

// readResident reads a process's resident memory.
func readResident(pid int) (residentSet, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return residentSet{}, err
	}
	defer f.Close()
	var r residentSet
	fields := map[string]*uint64{"VmRSS:": &r.total, "RssAnon:": &r.anon, "RssFile:": &r.file}
	found := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, rest, _ := strings.Cut(s.Text(), "\t")
		into, ok := fields[name]
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return residentSet{}, fmt.Errorf("process %d: %s %w", pid, name, err)
		}
		*into = kb * 1024
		found++
	}
	if found < len(fields) {
		return residentSet{}, fmt.Errorf("no VmRSS, RssAnon and RssFile for process %d", pid)
	}
	return r, nil
}

// scrapeAll reads the samples of one metric family from a Prometheus text
// endpoint, by their label set.
func scrapeAll(addr, name string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return parseMetric(resp.Body, name)
}

// isWrite tells whether an HTTP method, as client-go and kube-apiserver
// count them, changes something.
func isWrite(method string) bool {
	switch method {
	case "POST", "PUT", "PATCH", "DELETE":
		return true
	}
	return false
}

// writesOf sums the counts of the methods that change something.
func writesOf(byMethod map[string]float64) float64 {
	total := 0.0
	for method, v := range byMethod {
		if isWrite(method) {
			total += v
		}
	}
	return total
}

// writeCounter counts kube-apiserver's requests that change something, from
// when it was made.
type writeCounter struct {
	cfg    *rest.Config
	before map[string]float64
	since  time.Time
	err    error
}

func (e *env) countWrites(ctx context.Context) *writeCounter {
	before, err := scrapeAPIServer(ctx, e.c.Config, "apiserver_request_total")
	// Events carry their times in whole seconds.
	return &writeCounter{cfg: e.c.Config, before: before, since: time.Now().Truncate(time.Second), err: err}
}

// perIdentity lists the writes made since, by resource, subresource and
// verb, and the Events created since, by who reported them and why, each
// divided by the n identities done.
func (w *writeCounter) perIdentity(ctx context.Context, n int) string {
	after, err := scrapeAPIServer(ctx, w.cfg, "apiserver_request_total")
	if err = errors.Join(w.err, err); err != nil {
		return "writes not counted: " + err.Error()
	}
	var parts []string
	for key, v := range growthBy(w.before, after, "resource", "subresource", "verb") {
		if per := v / float64(n); isWrite(key[strings.LastIndex(key, " ")+1:]) && per >= 0.005 { // not the leases' renewals
			parts = append(parts, fmt.Sprintf("%s %.2f", key, per))
		}
	}
	slices.Sort(parts)
	text := "kube-apiserver's writes per identity: " + strings.Join(parts, ", ")
	events, err := w.eventsSince(ctx)
	switch {
	case err != nil:
		text += "; Events not counted: " + err.Error()
	case len(events) > 0:
		var reasons []string
		for key, count := range events {
			reasons = append(reasons, fmt.Sprintf("%s %.2f", key, float64(count)/float64(n)))
		}
		slices.Sort(reasons)
		text += "; Events per identity, by reporter and reason: " + strings.Join(reasons, ", ")
	}
	return text
}

// eventsSince counts the Events created since the counter was made, in
// every namespace, by their reporter and reason.
func (w *writeCounter) eventsSince(ctx context.Context) (map[string]int, error) {
	c, err := kubernetes.NewForConfig(w.cfg)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	opts := metav1.ListOptions{Limit: 500}
	for {
		list, err := c.CoreV1().Events("").List(ctx, opts)
		if err != nil {
			return nil, err
		}
		for _, ev := range list.Items {
			if ev.CreationTimestamp.Time.Before(w.since) {
				continue
			}
			reporter := ev.ReportingController
			if reporter == "" {
				reporter = ev.Source.Component
			}
			counts[reporter+" "+ev.Reason]++
		}
		if opts.Continue = list.Continue; opts.Continue == "" {
			return counts, nil
		}
	}
}

// scrapeAPIServer reads the samples of one metric family of kube-apiserver.
func scrapeAPIServer(ctx context.Context, cfg *rest.Config, name string) (map[string]float64, error) {
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	body, err := c.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	return parseMetric(bytes.NewReader(body), name)
}

// parseMetric reads the samples of one metric family from Prometheus text,
// by their label set.
func parseMetric(r io.Reader, name string) (map[string]float64, error) {
	out := map[string]float64{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		labels := ""
		if strings.HasPrefix(rest, "{") {
			end := strings.Index(rest, "}")
			labels, rest = rest[1:end], rest[end+1:]
		} else if !strings.HasPrefix(rest, " ") {
			continue // another metric whose name starts alike
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err == nil {
			out[labels] += v
		}
	}
	return out, s.Err()
}

// scrape sums each of a few metrics over its labels.
func scrape(addr string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, name := range []string{"go_memstats_heap_inuse_bytes", "workqueue_depth"} {
		m, err := scrapeAll(addr, name)
		if err != nil {
			return nil, err
		}
		for _, v := range m {
			out[name] += v
		}
	}
	return out, nil
}

func pemEncode(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func mib(b float64) string { return fmt.Sprintf("%.0f MiB", b/(1<<20)) }

// cpuSeconds reads the CPU time a process has used, user and system.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command may hold spaces; the fields we want follow its ')'.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // clock ticks, USER_HZ = 100
}

// pidsUsing finds the processes whose command line names dir: a test
// cluster's kube-apiserver and etcd.
func pidsUsing(dir string) map[string]int {
	out := map[string]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), dir) {
			continue
		}
		out[filepath.Base(strings.SplitN(string(cmdline), "\x00", 2)[0])] = pid
	}
	return out
}

// cpuMeter measures the CPU time each process, or group of processes, of a
// run uses.
type cpuMeter struct {
	pids  map[string][]int
	start map[string]float64
}

func newCPUMeter(pids map[string][]int) *cpuMeter {
	m := &cpuMeter{pids: pids, start: map[string]float64{}}
	for name := range pids {
		m.start[name] = m.seconds(name)
	}
	return m
}

func (m *cpuMeter) seconds(name string) float64 {
	total := 0.0
	for _, pid := range m.pids[name] {
		total += cpuSeconds(pid)
	}
	return total
}

// String reports each process's CPU seconds since the meter started.
func (m *cpuMeter) String() string {
	var parts []string
	for _, name := range []string{"kube-apiserver", "etcd", "cert-manager and the load", "meshcert", "the agents"} {
		if _, ok := m.pids[name]; ok {
			parts = append(parts, fmt.Sprintf("%s %.1fs", name, m.seconds(name)-m.start[name]))
		}
	}
	return strings.Join(parts, ", ")
}
