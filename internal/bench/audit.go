package bench

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// auditEvent is one answered request on a CertificateRequest, as
// kube-apiserver's audit log (localcluster.Options.APIServerAuditLog) tells
// it.
type auditEvent struct {
	verb, subresource string
	namespace, name   string
	code              int
	// answered runs from the request's arrival to its answer.
	answered span
}

type auditLine struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	Received time.Time `json:"requestReceivedTimestamp"`
	Answered time.Time `json:"stageTimestamp"`
}

// parseAuditLine reads one line of the audit log; false means it is not an
// answered request on a named CertificateRequest.
func parseAuditLine(line []byte) (auditEvent, bool) {
	var l auditLine
	if json.Unmarshal(line, &l) != nil || l.Stage != "ResponseComplete" || l.ObjectRef == nil ||
		l.ObjectRef.Resource != "certificaterequests" || l.ObjectRef.Name == "" || l.ResponseStatus == nil ||
		l.Received.IsZero() || l.Answered.Before(l.Received) {
		return auditEvent{}, false
	}
	return auditEvent{
		verb: l.Verb, subresource: l.ObjectRef.Subresource,
		namespace: l.ObjectRef.Namespace, name: l.ObjectRef.Name,
		code:     l.ResponseStatus.Code,
		answered: span{l.Received, l.Answered},
	}, true
}

// readAuditLog reads the answered requests of an audit log.
func readAuditLog(path string) ([]auditEvent, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []auditEvent
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		if e, ok := parseAuditLine(line); ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// requestTimeline is what kube-apiserver saw of one CertificateRequest: its
// create, then the status writes of cert-manager's approver and CA signer.
type requestTimeline struct {
	create   span
	statuses []span
}

// timelines are the requests' timelines by namespace/name.
func timelines(events []auditEvent) map[string]*requestTimeline {
	out := map[string]*requestTimeline{}
	for _, e := range events {
		key := e.namespace + "/" + e.name
		t := out[key]
		switch {
		case e.verb == "create" && e.subresource == "" && e.code == 201 && t == nil:
			out[key] = &requestTimeline{create: e.answered}
		case (e.verb == "update" || e.verb == "patch") && e.subresource == "status" && e.code == 200 && t != nil:
			t.statuses = append(t.statuses, e.answered)
		}
	}
	for _, t := range out {
		slices.SortFunc(t.statuses, func(a, b span) int { return a.start.Compare(b.start) })
	}
	return out
}

// phaseNames name the phases a round trip is split into by its request's
// timeline.
var phaseNames = []string{"before the create", "the create", "to the approval", "the approval's write", "to the signing", "the signing's write", "after the signing"}

// phases splits a round trip by its request's timeline; false if the
// timeline lacks the create or either status write.
func (t *requestTimeline) phases(trip span) ([]time.Duration, bool) {
	if t == nil || len(t.statuses) < 2 {
		return nil, false
	}
	approval, signing := t.statuses[0], t.statuses[1]
	points := []time.Time{trip.start, t.create.start, t.create.end, approval.start, approval.end, signing.start, signing.end, trip.end}
	out := make([]time.Duration, len(points)-1)
	for i := range out {
		out[i] = points[i+1].Sub(points[i])
	}
	return out, true
}

// splitTrip is a round trip with its phases.
type splitTrip struct {
	trip   span
	phases []time.Duration
}

// splitTrips splits each round trip whose request, named by requestOf, the
// log holds; the rest are left out.
func splitTrips(trips []span, requestOf func(i int) string, byRequest map[string]*requestTimeline) []splitTrip {
	var out []splitTrip
	for i, trip := range trips {
		if p, ok := byRequest[requestOf(i)].phases(trip); ok {
			out = append(out, splitTrip{trip, p})
		}
	}
	return out
}

// phaseNote gives, for each side, the median of each phase over all its
// split round trips, and over the slowest 5% of those no mark overlapped;
// and the phases of each round trip above that set's p99.
func phaseNote(agent, bare []splitTrip, marks []span) string {
	side := func(name string, trips []splitTrip) string {
		if len(trips) == 0 {
			return name + ": no round trip split"
		}
		var clear []splitTrip
		for _, t := range trips {
			if !t.trip.overlapsAny(marks) {
				clear = append(clear, t)
			}
		}
		slices.SortFunc(clear, func(a, b splitTrip) int { return cmp.Compare(a.trip.took(), b.trip.took()) })
		text := fmt.Sprintf("%s, all %d: %s", name, len(trips), medianPhases(trips))
		if len(clear) == 0 {
			return text
		}
		slowest := clear[len(clear)*95/100:]
		text += fmt.Sprintf("; the slowest 5%% of the %d no mark overlapped: %s", len(clear), medianPhases(slowest))
		var above []string
		p99 := clear[min(len(clear)-1, len(clear)*99/100)].trip.took()
		for _, t := range clear {
			if t.trip.took() >= p99 {
				above = append(above, fmt.Sprintf("%s: %s", ms(t.trip.took()), joinPhases(t.phases)))
			}
		}
		return text + "; from its p99 up: " + strings.Join(above, ", ")
	}
	return fmt.Sprintf("kube-apiserver's audit log (CertificateRequests only, at the Metadata level) splits each round trip into %s, in ms. %s. %s.",
		strings.Join(phaseNames, ", "), side("The agent's", agent), side("The bare ones'", bare))
}

// medianPhases is the median of each phase over trips.
func medianPhases(trips []splitTrip) string {
	medians := make([]time.Duration, len(phaseNames))
	for i := range medians {
		values := make([]time.Duration, len(trips))
		for j, t := range trips {
			values[j] = t.phases[i]
		}
		medians[i] = median(values)
	}
	return joinPhases(medians)
}

func joinPhases(phases []time.Duration) string {
	parts := make([]string, len(phases))
	for i, d := range phases {
		parts[i] = fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
	}
	return strings.Join(parts, "/")
}
