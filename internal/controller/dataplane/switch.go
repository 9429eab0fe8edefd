package dataplane

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcert/meshcert/internal/issuance"
)

// switches tracks the meshes whose enabled backend changed, so the reissues
// spread over a window instead of one burst, and their progress is reported.
type switches struct {
	window time.Duration
	mu     sync.Mutex
	byMesh map[string]*meshSwitch
}

type meshSwitch struct {
	to      string
	started time.Time
	total   int
	done    int
	// reported is the last tenth of progress an Event was sent for.
	reported int
}

func newSwitches(window time.Duration) *switches {
	return &switches{window: window, byMesh: map[string]*meshSwitch{}}
}

// begin records that a mesh switches to a backend, unless that is known. It
// reports whether this call began the switch.
func (s *switches) begin(mesh, to string, now time.Time, total int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sw := s.byMesh[mesh]; sw != nil && sw.to == to {
		return false
	}
	s.byMesh[mesh] = &meshSwitch{to: to, started: now, total: max(total, 1)}
	return true
}

// wait is how long a dataplane's reissue waits: each dataplane has its own
// offset within the window, derived from its name.
func (s *switches) wait(mesh string, dp types.NamespacedName, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := s.byMesh[mesh]
	if sw == nil {
		return 0
	}
	due := sw.started.Add(time.Duration(float64(s.window) * issuance.Spread(dp.String(), sw.to)))
	return max(due.Sub(now), 0)
}

// progress counts one dataplane reissued by the switch's backend, and says
// whether a new tenth was reached, and whether the switch is complete.
func (s *switches) progress(mesh, backend string) (done, total int, report, complete bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sw := s.byMesh[mesh]
	if sw == nil || sw.to != backend {
		return 0, 0, false, false
	}
	sw.done++
	done, total = sw.done, sw.total
	if done >= total {
		delete(s.byMesh, mesh)
		return done, total, false, true
	}
	if tenth := done * 10 / total; tenth > sw.reported {
		sw.reported = tenth
		return done, total, true, false
	}
	return done, total, false, false
}

// reportSwitchProgress reports a switch of enabled backend on the Mesh: each
// tenth of the way, then its end.
func (r *Reconciler) reportSwitchProgress(p *plan) {
	done, total, report, complete := r.switches.progress(p.mesh.Name, p.backend)
	switch {
	case complete:
		r.Recorder.Eventf(p.mesh, nil, corev1.EventTypeNormal, "BackendSwitchComplete", "SwitchBackend",
			"all %d dataplanes hold certificates from backend %q; backends that no longer issue can be removed", total, p.backend)
	case report:
		r.Recorder.Eventf(p.mesh, nil, corev1.EventTypeNormal, "BackendSwitchProgress", "SwitchBackend",
			"%d of %d dataplanes reissued from backend %q", done, total, p.backend)
	}
}
