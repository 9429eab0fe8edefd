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
	_, rest, ok := strings.Cut(status, "VmRSS:")
	var kb uint64
	if _, err := fmt.Sscanf(rest, "%d kB", &kb); !ok || err != nil {
		return 0, fmt.Errorf("no VmRSS in %q", status)
	}
	return kb * 1024, nil
}

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
	// The command may hold spaces; the fields counted follow its last ')'.
	end := strings.LastIndexByte(stat, ')')
	fields := strings.Fields(stat[end+1:])
	var utime, stime float64
	if end < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("too few fields in %q", stat)
	}
	if _, err := fmt.Sscan(fields[11]+" "+fields[12], &utime, &stime); err != nil {
		return 0, fmt.Errorf("no utime and stime in %q: %w", stat, err)
	}
	return (utime + stime) / 100, nil
}

// pidUsing finds the process of a program whose command line names dir: a
// test cluster's kube-apiserver, say.
func pidUsing(program, dir string) (int, error) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		name, _, _ := strings.Cut(string(cmdline), "\x00")
		if pid, err := strconv.Atoi(e.Name()); err == nil && strings.Contains(string(cmdline), dir) && filepath.Base(name) == program {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no %s process using %s", program, dir)
}

// counters are the sums of the metrics of a meshcert process that the
// bench reads.
type counters struct {
	// requests are client-go's requests to the API server; writes those of
	// them that change something.
	requests, writes float64
	reconciles       float64
}

// scrape reads the counters at a Prometheus text endpoint.
func scrape(addr string) (counters, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return counters{}, err
	}
	defer resp.Body.Close()
	return parseCounters(resp.Body)
}

// parseCounters reads the counters from Prometheus text.
func parseCounters(r io.Reader) (counters, error) {
	var c counters
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		end := strings.IndexAny(line, "{ ")
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if end < 0 || err != nil {
			continue
		}
		switch line[:end] {
		case "rest_client_requests_total":
			c.requests += v
			for _, method := range []string{"POST", "PUT", "PATCH", "DELETE"} {
				if strings.Contains(line[end:], `method="`+method+`"`) {
					c.writes += v
				}
			}
		case "controller_runtime_reconcile_total":
			c.reconciles += v
		}
	}
	return c, s.Err()
}
