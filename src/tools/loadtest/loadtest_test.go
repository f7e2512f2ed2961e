package loadtest

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
)

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample is every percentile", ms(7), 99.9, 7 * time.Millisecond},
		{"median of 1..100 is 50 (nearest rank)", ms(hundred...), 50, 50 * time.Millisecond},
		{"p90 of 1..100", ms(hundred...), 90, 90 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p99.9 of 1..100 is the max", ms(hundred...), 99.9, 100 * time.Millisecond},
		{"p0 is the min", ms(hundred...), 0, 1 * time.Millisecond},
		{"p100 is the max", ms(hundred...), 100, 100 * time.Millisecond},
		{"p50 of two is the lower", ms(1, 2), 50, 1 * time.Millisecond},
		{"p51 of two is the upper", ms(1, 2), 51, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	samples := []time.Duration{4 * time.Millisecond, time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond}
	got := Summarize(samples)
	want := Latency{Count: 4, Mean: 2.5, P50: 2, P90: 4, P99: 4, P999: 4, Max: 4}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if (Summarize(nil) != Latency{}) {
		t.Error("Summarize(nil) is not zero")
	}
}

func TestTemplateVariables(t *testing.T) {
	tests := []struct {
		name string
		text string
		vars Vars
		want string
	}{
		{"no variables", `{"a":1}`, Vars{}, `{"a":1}`},
		{"seq and name", `${seq} ${name}`, Vars{Run: "ab12", Seq: 42}, `42 load-ab12-42`},
		{"uid is a UUID from run and seq", `${uid}`, Vars{Run: "ab12cd34", Seq: 0x1f}, `ab12cd34-0000-4000-8000-00000000001f`},
		{"short run ids are padded", `${uid}`, Vars{Run: "ab", Seq: 1}, `ab000000-0000-4000-8000-000000000001`},
		{"unique key per seq", `${key}/${size}`, Vars{Run: "r1", Seq: 7, KeyMode: KeyUnique, Size: 10}, `u-r1-7/10`},
		{"shared key", `${key}`, Vars{Run: "r1", Seq: 7, KeyMode: KeyShared, SharedKey: "jobs"}, `jobs`},
		{"namespace", `"${namespace}"`, Vars{Namespace: "team-a"}, `"team-a"`},
		{"adjacent variables", `${seq}${seq}`, Vars{Seq: 3}, `33`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := Compile([]byte(tt.text))
			if err != nil {
				t.Fatal(err)
			}
			if got := string(tmpl.Append(nil, &tt.vars)); got != tt.want {
				t.Errorf("Append = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTemplateErrors(t *testing.T) {
	for _, text := range []string{`${nope}`, `${seq`, `x ${} y`} {
		if _, err := Compile([]byte(text)); err == nil {
			t.Errorf("Compile(%q) accepted a bad template", text)
		}
	}
}

func TestVarsKeyMatchesTemplate(t *testing.T) {
	v := Vars{Run: "r", Seq: 12, KeyMode: KeyUnique}
	tmpl, _ := Compile([]byte(`${key}`))
	if got := string(tmpl.Append(nil, &v)); got != v.Key() {
		t.Errorf("template key %q, Vars.Key %q", got, v.Key())
	}
	if UID(&v) != string(mustCompile(t, `${uid}`).Append(nil, &v)) {
		t.Error("UID differs from the template's uid")
	}
}

func mustCompile(t *testing.T, s string) *Template {
	t.Helper()
	tmpl, err := Compile([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

func TestPadReachesSizeAndStaysValid(t *testing.T) {
	v := &Vars{Run: "abcd1234", Namespace: "load", KeyMode: KeyShared, SharedKey: "k", Size: 10}
	for _, size := range []int{0, 2 << 10, 64 << 10} {
		raw, err := Pad(Pod(PodOptions{Annotated: true, KeyMode: KeyShared}), size, v)
		if err != nil {
			t.Fatal(err)
		}
		review := mustCompile(t, string(Review(raw, false))).Append(nil, v)
		var r struct {
			Request struct {
				UID    string          `json:"uid"`
				Object json.RawMessage `json:"object"`
			} `json:"request"`
		}
		if err := json.Unmarshal(review, &r); err != nil {
			t.Fatalf("size %d: the review is not JSON: %v", size, err)
		}
		if r.Request.UID != UID(v) {
			t.Errorf("size %d: uid %q, want %q", size, r.Request.UID, UID(v))
		}
		if n := len(r.Request.Object); n < size || (size > 0 && n > size+200) {
			t.Errorf("size %d: the pod is %d bytes", size, n)
		}
		var pod struct {
			Metadata struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(r.Request.Object, &pod); err != nil {
			t.Fatal(err)
		}
		if got := pod.Metadata.Annotations[admission.AnnotationSemaphoreKey]; got != "k" {
			t.Errorf("size %d: semaphore key %q, want k", size, got)
		}
		if got := pod.Metadata.Annotations[admission.AnnotationSemaphoreSize]; got != "10" {
			t.Errorf("size %d: semaphore size %q, want 10", size, got)
		}
	}
}

// answer builds an AdmissionReview response the way the webhook writes it.
func answer(uid string, allowed bool, patch string, status string) string {
	var b strings.Builder
	b.WriteString(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"` + uid + `","allowed":`)
	if allowed {
		b.WriteString("true")
	} else {
		b.WriteString("false")
	}
	if status != "" {
		b.WriteString(`,"status":` + status)
	}
	if patch != "" {
		b.WriteString(`,"patchType":"JSONPatch","patch":"` + base64.StdEncoding.EncodeToString([]byte(patch)) + `"`)
	}
	b.WriteString(`}}`)
	return b.String()
}

const (
	slotOps = `[{"op":"add","path":"/metadata/annotations/prometheus-metrics-proxy-hook.kaidotio.github.io~1semaphore-slot","value":"7"},` +
		`{"op":"add","path":"/metadata/annotations/prometheus-metrics-proxy-hook.kaidotio.github.io~1semaphore-holder","value":"0123456789abcdef0123456789abcdef"}]`
	slotMap = `[{"op":"add","path":"/metadata/annotations","value":{"prometheus-metrics-proxy-hook.kaidotio.github.io/semaphore-slot":"3",` +
		`"prometheus-metrics-proxy-hook.kaidotio.github.io/semaphore-holder":"fedcba9876543210fedcba9876543210"}}]`
	slotReordered = `[{"value":"5","op":"add","path":"/metadata/annotations/prometheus-metrics-proxy-hook.kaidotio.github.io~1semaphore-slot"},` +
		`{"path":"/metadata/annotations/prometheus-metrics-proxy-hook.kaidotio.github.io~1semaphore-holder","op":"add","value":"0123456789abcdef0123456789abcdef"}]`
	full = `{"metadata":{},"status":"Failure","message":"semaphore \"load/k\" is full (10/10 slots held)","reason":"TooManyRequests","code":429}`
	bad  = `{"metadata":{},"status":"Failure","message":"annotation x","reason":"BadRequest","code":400}`
)

func TestParseAnswer(t *testing.T) {
	const uid = "ab12cd34-0000-4000-8000-000000000001"
	tests := []struct {
		name     string
		body     string
		slots    bool
		want     Answer
		invalid  string // substring of the error, "" for none
		expect   Expect
		semaphor bool
		wrong    bool // Expect.Check fails
	}{
		{name: "allowed", body: answer(uid, true, "", ""), want: Answer{Allowed: true, Slot: -1}, expect: ExpectAllowed},
		{name: "allowed is not patched", body: answer(uid, true, "", ""), want: Answer{Allowed: true, Slot: -1}, expect: ExpectPatched, wrong: true},
		{name: "patched", body: answer(uid, true, `[{"op":"add","path":"/a","value":1}]`, ""), want: Answer{Allowed: true, Patched: true, Slot: -1}, expect: ExpectPatched},
		{name: "patched is not allowed-only", body: answer(uid, true, `[{"op":"add","path":"/a","value":1}]`, ""), want: Answer{Allowed: true, Patched: true, Slot: -1}, expect: ExpectAllowed, wrong: true},
		{name: "slot annotations one by one", body: answer(uid, true, slotOps, ""), slots: true, semaphor: true,
			want: Answer{Allowed: true, Patched: true, Slot: 7, Holder: "0123456789abcdef0123456789abcdef"}, expect: ExpectPatchedOrFull},
		{name: "slot annotations as a map", body: answer(uid, true, slotMap, ""), slots: true, semaphor: true,
			want: Answer{Allowed: true, Patched: true, Slot: 3, Holder: "fedcba9876543210fedcba9876543210"}, expect: ExpectPatched},
		{name: "slot annotations in another field order", body: answer(uid, true, slotReordered, ""), slots: true, semaphor: true,
			want: Answer{Allowed: true, Patched: true, Slot: 5, Holder: "0123456789abcdef0123456789abcdef"}, expect: ExpectPatched},
		{name: "admitted without a slot", body: answer(uid, true, `[{"op":"add","path":"/a","value":1}]`, ""), slots: true, semaphor: true,
			want: Answer{Allowed: true, Patched: true, Slot: -1}, expect: ExpectPatched, wrong: true},
		{name: "full", body: answer(uid, false, "", full), slots: true, semaphor: true,
			want: Answer{Code: 429, Reason: "TooManyRequests", Message: `semaphore "load/k" is full (10/10 slots held)`, Slot: -1}, expect: ExpectPatchedOrFull},
		{name: "full is not patched", body: answer(uid, false, "", full), want: Answer{Code: 429, Reason: "TooManyRequests", Message: `semaphore "load/k" is full (10/10 slots held)`, Slot: -1}, expect: ExpectPatched, wrong: true},
		{name: "bad request is not full", body: answer(uid, false, "", bad), want: Answer{Code: 400, Reason: "BadRequest", Message: "annotation x", Slot: -1}, expect: ExpectPatchedOrFull, wrong: true},
		{name: "any takes a denial", body: answer(uid, false, "", bad), want: Answer{Code: 400, Reason: "BadRequest", Message: "annotation x", Slot: -1}, expect: ExpectAny},
		{name: "uid not echoed", body: answer("other", true, "", ""), invalid: "uid"},
		{name: "not JSON", body: `{"apiVersion":`, invalid: "not JSON"},
		{name: "wrong kind", body: strings.Replace(answer(uid, true, "", ""), "AdmissionReview", "Pod", 1), invalid: "kind"},
		{name: "no response", body: `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, invalid: "no response"},
		{name: "denial without status", body: answer(uid, false, "", ""), invalid: "status"},
		{name: "patch without type", body: strings.Replace(answer(uid, true, "[]", ""), `"patchType":"JSONPatch",`, "", 1), invalid: "together"},
		{name: "patch of another type", body: strings.Replace(answer(uid, true, "[]", ""), "JSONPatch", "MergePatch", 1), invalid: "JSONPatch"},
		{name: "patch not an array", body: answer(uid, true, `{"op":"add"}`, ""), invalid: "array"},
		{name: "patch not JSON", body: answer(uid, true, `[{"op":`, ""), invalid: "array"},
		{name: "denial with a patch", body: answer(uid, false, "[]", bad), invalid: "denial with a patch"},
		{name: "slot without holder", body: answer(uid, true, `[{"op":"add","path":"/metadata/annotations/prometheus-metrics-proxy-hook.kaidotio.github.io~1semaphore-slot","value":"1"}]`, ""),
			slots: true, invalid: "together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAnswer([]byte(tt.body), uid, tt.slots)
			if tt.invalid != "" {
				if err == nil || !errors.Is(err, errInvalid) || !strings.Contains(err.Error(), tt.invalid) {
					t.Fatalf("ParseAnswer error %v, want one about %q", err, tt.invalid)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ParseAnswer = %+v, want %+v", got, tt.want)
			}
			if err := tt.expect.Check(got, tt.semaphor); (err != nil) != tt.wrong {
				t.Errorf("Check(%s) = %v, want failure %v", tt.expect, err, tt.wrong)
			}
		})
	}
}

func TestLedger(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	tests := []struct {
		name      string
		size      int
		build     func(l *Ledger)
		maxHeld   int
		over      int
		wrongDeny int
	}{
		{
			name: "fill then deny: the denials came when every slot was possibly held",
			size: 2,
			build: func(l *Ledger) {
				l.Admitted("k", 2, ms(0), ms(5))
				l.Admitted("k", 2, ms(1), ms(6))
				l.Denied("k", 2, ms(7), ms(9))
			},
			maxHeld: 2,
		},
		{
			name: "a denial while only one of two slots could be held",
			size: 2,
			build: func(l *Ledger) {
				l.Admitted("k", 2, ms(0), ms(5))
				l.Denied("k", 2, ms(6), ms(8))
			},
			maxHeld: 1, wrongDeny: 1,
		},
		{
			name: "an admission in flight during the denial may hold the slot",
			size: 2,
			build: func(l *Ledger) {
				l.Admitted("k", 2, ms(0), ms(5))
				l.Admitted("k", 2, ms(6), ms(20)) // sent before the denial was answered
				l.Denied("k", 2, ms(7), ms(9))
			},
			maxHeld: 2,
		},
		{
			name: "a release answered before the denial was sent frees the slot",
			size: 1,
			build: func(l *Ledger) {
				id := l.Admitted("k", 1, ms(0), ms(5))
				l.Released(id, ms(6), ms(7))
				l.Denied("k", 1, ms(8), ms(9))
			},
			maxHeld: 1, wrongDeny: 1,
		},
		{
			name: "a release still in flight during the denial does not",
			size: 1,
			build: func(l *Ledger) {
				id := l.Admitted("k", 1, ms(0), ms(5))
				l.Released(id, ms(6), ms(10))
				l.Denied("k", 1, ms(8), ms(9))
			},
			maxHeld: 1,
		},
		{
			name: "an unknown outcome may hold a slot for the rest of the run",
			size: 1,
			build: func(l *Ledger) {
				l.Unknown("k", 1, ms(0))
				l.Denied("k", 1, ms(8), ms(9))
			},
		},
		{
			name: "more answered admissions than slots before any release is sent: over-admission",
			size: 2,
			build: func(l *Ledger) {
				a := l.Admitted("k", 2, ms(0), ms(5))
				l.Admitted("k", 2, ms(0), ms(6))
				l.Admitted("k", 2, ms(0), ms(7))
				l.Released(a, ms(8), ms(9))
			},
			maxHeld: 3, over: 1,
		},
		{
			name: "a release sent before the next admission is answered: no over-admission",
			size: 2,
			build: func(l *Ledger) {
				a := l.Admitted("k", 2, ms(0), ms(5))
				l.Admitted("k", 2, ms(0), ms(6))
				l.Released(a, ms(7), ms(12))
				l.Admitted("k", 2, ms(8), ms(10))
			},
			maxHeld: 2,
		},
		{
			name: "a failed release no longer counts as certainly held",
			size: 1,
			build: func(l *Ledger) {
				a := l.Admitted("k", 1, ms(0), ms(5))
				l.ReleaseFailed(a, ms(6))
				l.Admitted("k", 1, ms(7), ms(8))
			},
			maxHeld: 1,
		},
		{
			name: "keys are separate",
			size: 1,
			build: func(l *Ledger) {
				l.Admitted("a", 1, ms(0), ms(5))
				l.Admitted("b", 1, ms(0), ms(5))
				l.Denied("b", 1, ms(6), ms(7))
			},
			maxHeld: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLedger()
			tt.build(l)
			v := l.Check()
			if v.MaxCertainlyHeld != tt.maxHeld || v.OverAdmissions != tt.over || v.DenialsWhileFree != tt.wrongDeny {
				t.Errorf("Check = max held %d, over %d, wrong denials %d; want %d, %d, %d",
					v.MaxCertainlyHeld, v.OverAdmissions, v.DenialsWhileFree, tt.maxHeld, tt.over, tt.wrongDeny)
			}
		})
	}
}

func TestLedgerHeldAtTheEnd(t *testing.T) {
	l := NewLedger()
	a := l.Admitted("k", 5, 0, 1)
	l.Admitted("k", 5, 0, 2)
	b := l.Admitted("k", 5, 0, 3)
	l.Unknown("k", 5, 4)
	l.Released(a, 5, 6)
	l.ReleaseFailed(b, 7)
	v := l.Check()
	if v.Held["k"] != 1 || v.MayHold["k"] != 3 || v.Admitted != 3 || v.Unknown != 1 {
		t.Errorf("held %d, may hold %d, admitted %d, unknown %d; want 1, 3, 3, 1", v.Held["k"], v.MayHold["k"], v.Admitted, v.Unknown)
	}
}

func TestParseCommandStats(t *testing.T) {
	info := "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=1\r\n" +
		"cmdstat_info:calls=3,usec=9,usec_per_call=3.00\r\ncmdstat_set:calls=24,usec=4\r\n"
	got := ParseCommandStats(info)
	if got["evalsha"] != (CommandStat{12, 1}) || got["info"].Calls != 3 || got["set"].Calls != 24 || len(got) != 3 {
		t.Errorf("ParseCommandStats = %v", got)
	}
}

func TestFindUID(t *testing.T) {
	tests := []struct {
		body string
		want string
		ok   bool
	}{
		{`{"kind":"AdmissionReview","request":{"uid":"abc","object":{"metadata":{"uid":"x"}}}}`, "abc", true},
		{`{"request":{"kind":{"kind":"Pod"},"uid":"u-1"}}`, "u-1", true},
		{`{"response":{"uid":"abc"}}`, "", false},
		{`{"request":{"uid":"a\"b"}}`, "", false},
	}
	for _, tt := range tests {
		got, err := findUID([]byte(tt.body))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("findUID(%s) = %q, %v; want %q, ok %v", tt.body, got, err, tt.want, tt.ok)
		}
	}
}

// TestReadWireAgreesWithEncodingJSON checks the one-pass reader against
// encoding/json on answers written in other legal ways, and that it
// rejects what is not JSON.
func TestReadWireAgreesWithEncodingJSON(t *testing.T) {
	const uid = "u-1"
	valid := []string{
		answer(uid, true, "[]", ""),
		answer(uid, false, "", full),
		` { "kind" : "AdmissionReview" , "apiVersion":"admission.k8s.io/v1", "response" : { "allowed" : true , "uid":"u-1" } } `,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","extra":{"a":[1,2.5,-3e+2,true,false,null,"x\"y"]},"response":{"uid":"u-1","allowed":true,"warnings":["w"],"auditAnnotations":{"k":"v"}}}`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"u\u0069d":"u-1","allowed":true}}`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"u\u002d1","allowed":true}}`,
		`{"apiVersion":"admission.k8s.io\/v1","kind":"AdmissionReview","response":{"uid":"u-1","allowed":true}}`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","uid":"u-1","allowed":false,"allowed":true}}`,
		`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"u-1","allowed":true,"patchType":null,"patch":null,"status":null}}`,
	}
	for _, body := range valid {
		var w wire
		if err := readWire([]byte(body), &w); err != nil {
			t.Errorf("readWire(%s): %v", body, err)
			continue
		}
		var j struct {
			APIVersion string
			Kind       string
			Response   *struct {
				UID     string
				Allowed bool
			}
		}
		if err := json.Unmarshal([]byte(body), &j); err != nil {
			t.Fatalf("the case %s is not JSON: %v", body, err)
		}
		uid := string(w.uid)
		if w.apiVersion != j.APIVersion || w.kind != j.Kind || !w.response || uid != j.Response.UID || w.allowed != j.Response.Allowed {
			t.Errorf("readWire(%s) = %+v, encoding/json %+v", body, w, j)
		}
	}
	invalid := []string{
		``, `{`, `{"apiVersion":}`, `{"apiVersion":"x",}`, `{"apiVersion":"x"} x`, `{"a":01}`, `{"a":1.}`, `{"a":-}`,
		`{"a":"\x"}`, "{\"a\":\"\x01\"}", `{"a":tru}`, `{"a":[1,]}`, `{"a" 1}`, `{"a":"\u12"}`, `{"a":1}{`,
	}
	for _, body := range invalid {
		var w wire
		if readWire([]byte(body), &w) == nil {
			t.Errorf("readWire(%q) accepted it", body)
		}
		if json.Valid([]byte(body)) {
			t.Errorf("the case %q is valid JSON", body)
		}
	}
	// Valid JSON, not an answer.
	var w wire
	if readWire([]byte(`["x"]`), &w) == nil {
		t.Error("readWire accepted an array")
	}
}

func FuzzReadWire(f *testing.F) {
	f.Add([]byte(answer("u-1", true, slotOps, "")))
	f.Add([]byte(answer("u-1", false, "", full)))
	f.Fuzz(func(t *testing.T, body []byte) {
		var w wire
		if readWire(body, &w) == nil && !json.Valid(body) {
			t.Errorf("readWire accepted invalid JSON %q", body)
		}
	})
}
