package bench

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// auditLineOf is a line as kube-apiserver writes it, trimmed to what the
// bench reads and a little more.
func auditLineOf(stage, verb, name, subresource string, code int, received, answered string) string {
	return fmt.Sprintf(`{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":%q,"requestURI":"/apis/cert-manager.io/v1/namespaces/ns/certificaterequests","verb":%q,"user":{"username":"admin"},"userAgent":"bench","objectRef":{"resource":"certificaterequests","namespace":"ns","name":%q,"apiGroup":"cert-manager.io","apiVersion":"v1","subresource":%q},"responseStatus":{"metadata":{},"code":%d},"requestReceivedTimestamp":%q,"stageTimestamp":%q}`,
		stage, verb, name, subresource, code, received, answered)
}

func TestParseAuditLine(t *testing.T) {
	received := time.Date(2026, 12, 2, 16, 0, 0, 100000000, time.UTC)
	answered := received.Add(7300 * time.Microsecond)
	stamp := func(t time.Time) string { return t.Format(time.RFC3339Nano) }
	tests := map[string]struct {
		line   string
		want   auditEvent
		wantOK bool
	}{
		"a create": {
			line:   auditLineOf("ResponseComplete", "create", "b-1", "", 201, stamp(received), stamp(answered)),
			want:   auditEvent{verb: "create", namespace: "ns", name: "b-1", code: 201, answered: span{received, answered}},
			wantOK: true,
		},
		"a status write": {
			line:   auditLineOf("ResponseComplete", "update", "b-1", "status", 200, stamp(received), stamp(answered)),
			want:   auditEvent{verb: "update", subresource: "status", namespace: "ns", name: "b-1", code: 200, answered: span{received, answered}},
			wantOK: true,
		},
		"a watch, only started": {line: auditLineOf("ResponseStarted", "watch", "b-1", "", 200, stamp(received), stamp(answered))},
		"a list, of no name":    {line: auditLineOf("ResponseComplete", "list", "", "", 200, stamp(received), stamp(answered))},
		"answered before it arrived": {
			line: auditLineOf("ResponseComplete", "create", "b-1", "", 201, stamp(answered), stamp(received)),
		},
		"another resource": {
			line: strings.Replace(auditLineOf("ResponseComplete", "create", "b-1", "", 201, stamp(received), stamp(answered)), `"resource":"certificaterequests"`, `"resource":"secrets"`, 1),
		},
		"no timestamps": {line: `{"stage":"ResponseComplete","verb":"create","objectRef":{"resource":"certificaterequests","name":"b-1"},"responseStatus":{"code":201}}`},
		"no status":     {line: `{"stage":"ResponseComplete","verb":"create","objectRef":{"resource":"certificaterequests","name":"b-1"},"requestReceivedTimestamp":"2026-12-02T16:00:00Z","stageTimestamp":"2026-12-02T16:00:01Z"}`},
		"a cut line":    {line: auditLineOf("ResponseComplete", "create", "b-1", "", 201, stamp(received), stamp(answered))[:90]},
		"not JSON":      {line: "I1202 16:00:00.000000 1 httplog.go:134] HTTP"},
		"empty":         {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := parseAuditLine([]byte(tc.line))
			if ok != tc.wantOK || got != tc.want {
				t.Errorf("parseAuditLine() = %+v, %v; want %+v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestTripPhases(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	event := func(verb, name, sub string, code, from, to int) auditEvent {
		return auditEvent{verb: verb, subresource: sub, namespace: "ns", name: name, code: code, answered: span{at(from), at(to)}}
	}
	ms := func(values ...int) []time.Duration {
		out := make([]time.Duration, len(values))
		for i, v := range values {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	tests := map[string]struct {
		events []auditEvent
		trip   span
		want   []time.Duration
	}{
		"a create, the approval and the signing": {
			// Logged in the order they were answered, not that they arrived.
			events: []auditEvent{event("create", "r", "", 201, 2, 10), event("update", "r", "status", 200, 30, 34), event("update", "r", "status", 200, 15, 20)},
			trip:   span{at(0), at(40)},
			want:   ms(2, 8, 5, 5, 10, 4, 6),
		},
		"a conflicting status write is not a phase": {
			events: []auditEvent{event("create", "r", "", 201, 2, 10), event("update", "r", "status", 409, 12, 13),
				event("patch", "r", "status", 200, 15, 20), event("update", "r", "status", 200, 30, 34)},
			trip: span{at(0), at(40)},
			want: ms(2, 8, 5, 5, 10, 4, 6),
		},
		"a status write of another request": {
			events: []auditEvent{event("create", "r", "", 201, 2, 10), event("update", "r", "status", 200, 15, 20), event("update", "other", "status", 200, 30, 34)},
			trip:   span{at(0), at(40)},
		},
		"no create": {
			events: []auditEvent{event("update", "r", "status", 200, 15, 20), event("update", "r", "status", 200, 30, 34)},
			trip:   span{at(0), at(40)},
		},
		"a create that failed": {
			events: []auditEvent{event("create", "r", "", 409, 2, 10), event("update", "r", "status", 200, 15, 20), event("update", "r", "status", 200, 30, 34)},
			trip:   span{at(0), at(40)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := timelines(tc.events)["ns/r"].phases(tc.trip)
			if ok != (tc.want != nil) || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("phases() = %v, %v; want %v", got, ok, tc.want)
			}
		})
	}
}

func TestPhaseNote(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)
	trip := func(startMS, tookMS int, phases ...time.Duration) splitTrip {
		start := t0.Add(time.Duration(startMS) * time.Millisecond)
		return splitTrip{trip: span{start, start.Add(time.Duration(tookMS) * time.Millisecond)}, phases: phases}
	}
	ms := time.Millisecond
	var agent []splitTrip
	for i := range 99 {
		agent = append(agent, trip(100*i, 30, 1*ms, 2*ms, 3*ms, 4*ms, 5*ms, 6*ms, 9*ms))
	}
	// The slowest, waiting for the approval; and one a mark overlaps.
	agent = append(agent, trip(20000, 300, 1*ms, 2*ms, 273*ms, 4*ms, 5*ms, 6*ms, 9*ms), trip(30000, 500, 1*ms, 2*ms, 3*ms, 4*ms, 5*ms, 6*ms, 479*ms))
	marks := []span{{t0.Add(30000 * ms), t0.Add(30100 * ms)}}

	got := phaseNote(agent, nil, marks)
	for _, want := range []string{
		"The agent's, all 101: 1.0/2.0/3.0/4.0/5.0/6.0/9.0",
		"the slowest 5% of the 100 no mark overlapped: 1.0/2.0/3.0/4.0/5.0/6.0/9.0",
		"from its p99 up: 300.00 ms: 1.0/2.0/273.0/4.0/5.0/6.0/9.0.",
		"The bare ones': no round trip split.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("phaseNote() = %q; want it to contain %q", got, want)
		}
	}
	if strings.Contains(got, "479.0") {
		t.Errorf("phaseNote() = %q; the round trip a mark overlapped is not among the clear ones", got)
	}
}

func FuzzParseAuditLine(f *testing.F) {
	f.Add(auditLineOf("ResponseComplete", "create", "b-1", "", 201, "2026-12-02T16:00:00.1Z", "2026-12-02T16:00:00.1073Z"))
	f.Add(auditLineOf("ResponseStarted", "watch", "", "", 200, "2026-12-02T16:00:00Z", "2026-12-02T16:00:00Z"))
	f.Add(`{"stage":"ResponseComplete","objectRef":null}`)
	f.Fuzz(func(t *testing.T, line string) {
		e, ok := parseAuditLine([]byte(line))
		if !ok {
			return
		}
		if e.name == "" || e.answered.start.IsZero() || e.answered.end.Before(e.answered.start) {
			t.Fatalf("parseAuditLine(%q) = %+v: a nameless or backward event", line, e)
		}
		if p, ok := timelines([]auditEvent{e})[e.namespace+"/"+e.name].phases(span{}); ok {
			t.Fatalf("one event split a round trip: %v", p)
		}
	})
}
