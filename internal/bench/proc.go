package bench

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// residentBytes reads a process's resident memory (VmRSS).
func residentBytes(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseResident(string(b))
}

// parseResident reads VmRSS from the text of /proc/<pid>/status.
func parseResident(status string) (uint64, error) {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// cpuSeconds reads the CPU time a process has used, user and system.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseCPUSeconds(string(b))
}

// parseCPUSeconds reads utime and stime, in clock ticks of 1/100 s
// (USER_HZ), from the text of /proc/<pid>/stat.
func parseCPUSeconds(stat string) (float64, error) {
	// The command may hold spaces; the fields counted follow its ')'.
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("no command in %q", stat)
	}
	fields := strings.Fields(stat[end+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("too few fields in %q", stat)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("no utime and stime in %q", stat)
	}
	return (utime + stime) / 100, nil
}

// pidUsing finds the process of a program whose command line names dir: a
// test cluster's kube-apiserver, say.
func pidUsing(program, dir string) (int, error) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) && filepath.Base(strings.SplitN(string(cmdline), "\x00", 2)[0]) == program {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no %s process using %s", program, dir)
}

// scrape reads the samples of one metric family from a Prometheus text
// endpoint, by their label set.
func scrape(addr, name string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return parseMetric(resp.Body, name)
}

// parseMetric reads the samples of one metric family from Prometheus text,
// by their label set.
func parseMetric(r io.Reader, name string) (map[string]float64, error) {
	out := map[string]float64{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		rest, ok := strings.CutPrefix(s.Text(), name)
		if !ok {
			continue
		}
		labels := ""
		if strings.HasPrefix(rest, "{") {
			end := strings.Index(rest, "}")
			if end < 0 {
				continue
			}
			labels, rest = rest[1:end], rest[end+1:]
		} else if !strings.HasPrefix(rest, " ") {
			continue // another metric whose name starts alike
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
			out[labels] += v
		}
	}
	return out, s.Err()
}

// writesOf sums client-go's requests (rest_client_requests_total) whose
// method changes something.
func writesOf(samples map[string]float64) float64 {
	sum := 0.0
	for labels, v := range samples {
		for _, method := range []string{"POST", "PUT", "PATCH", "DELETE"} {
			if strings.Contains(labels, `method="`+method+`"`) {
				sum += v
			}
		}
	}
	return sum
}

// total sums samples.
func total(samples map[string]float64) float64 {
	sum := 0.0
	for _, v := range samples {
		sum += v
	}
	return sum
}
