package localcluster

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

func TestGuardDir(t *testing.T) {
	tests := map[string]struct {
		// script is the recorded process's shell script.
		script string
		// startTimeShift is added to its start time in the record: not 0,
		// the record is of an earlier process that had the same PID.
		startTimeShift uint64
		// inUse: another holder has the folder.
		inUse     bool
		wantEnded bool
		// wantSIGKILL: ended only after the grace period.
		wantSIGKILL bool
	}{
		"a recorded process still running is ended": {
			script:    "exec sleep 60",
			wantEnded: true,
		},
		"one that ignores SIGTERM is killed after the grace period": {
			script:      `trap "" TERM; exec sleep 60`,
			wantEnded:   true,
			wantSIGKILL: true,
		},
		"a PID that another process has now is left alone": {
			script:         "exec sleep 60",
			startTimeShift: 1,
		},
		"a folder in use is refused, its holder named and its processes left alone": {
			script: "exec sleep 60",
			inUse:  true,
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			child := exec.Command("sh", "-c", test.script)
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() {
				_ = child.Wait()
				close(exited)
			}()
			t.Cleanup(func() {
				_ = child.Process.Kill()
				<-exited
			})
			// Once the shell has set its traps: sleep runs.
			for deadline := time.Now().Add(5 * time.Second); !strings.HasPrefix(commandLine(child.Process.Pid), "sleep"); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the child runs %q, not sleep", commandLine(child.Process.Pid))
				}
			}
			// The record of a run killed before it stopped its processes, or
			// of the live holder's.
			stat, err := readStat(child.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			recorded := processID{PID: child.Process.Pid, StartTime: stat.startTime + test.startTimeShift, Command: "sh"}
			b, err := json.Marshal([]processID{recorded})
			if err != nil {
				t.Fatal(err)
			}
			if test.inUse {
				holder, err := guardDir(dir, logr.Discard(), time.Second)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = holder.lock.Close() })
			}
			if err := os.WriteFile(filepath.Join(dir, processesFileName), b, 0o644); err != nil {
				t.Fatal(err)
			}

			var logs logLines
			const grace = 200 * time.Millisecond
			start := time.Now()
			g, err := guardDir(dir, funcr.New(logs.add, funcr.Options{}), grace)
			if took := time.Since(start); test.wantSIGKILL != (took >= grace) {
				t.Errorf("guardDir took %s; wantSIGKILL %v, after a grace period of %s", took, test.wantSIGKILL, grace)
			}
			if test.inUse {
				var inUse *inUseError
				if !errors.As(err, &inUse) {
					t.Fatalf("got error %v, want an *inUseError", err)
				}
				if inUse.PID != os.Getpid() || !strings.Contains(inUse.Command, os.Args[0]) {
					t.Errorf("holder named as %d (%s), want this process, %d (%s)", inUse.PID, inUse.Command, os.Getpid(), os.Args[0])
				}
				if !strings.Contains(err.Error(), dir) {
					t.Errorf("the error %q does not name the folder %s", err, dir)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if err := g.release(); err != nil {
					t.Fatal(err)
				}
			}

			select {
			case <-exited:
				if !test.wantEnded {
					t.Error("the recorded process was ended")
				}
			case <-time.After(2 * time.Second):
				if test.wantEnded {
					t.Error("the recorded process still runs")
				}
			}
			if said := logs.String(); test.wantEnded != strings.Contains(said, `"pid"=`+strconv.Itoa(recorded.PID)) {
				t.Errorf("wantEnded %v, but the log says:\n%s", test.wantEnded, said)
			}
		})
	}
}

// A second guard of one folder in this process is refused too: flock locks
// open files, not processes.
func TestGuardDirReleases(t *testing.T) {
	dir := t.TempDir()
	for range 2 {
		g, err := guardDir(dir, logr.Discard(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := guardDir(dir, logr.Discard(), time.Second); err == nil {
			t.Fatal("the folder was guarded twice")
		}
		if err := g.release(); err != nil {
			t.Fatal(err)
		}
	}
}

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) add(prefix, args string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, prefix+" "+args)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
