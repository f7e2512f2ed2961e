package jsonscan_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/tools/loadtest/jsonscan"
)

// FuzzScanner checks the scanner against encoding/json: it accepts exactly
// the documents json.Valid accepts.
func FuzzScanner(f *testing.F) {
	for _, seed := range []string{
		`{}`, `[]`, `""`, `0`, `-0.5e+10`, `true`, `null`, `{"a":[1,2,{"b":"\u00e9\n"}]}`,
		`{"a":}`, `[1,]`, `01`, `"\x"`, `"a`, `{"a" 1}`, "\"\x01\"", `[[[[[[]]]]]]`, ` { } `, `1.`, `-`, `tru`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := jsonscan.Scanner{Data: data}
		err := s.Skip()
		if err == nil {
			err = s.End()
		}
		if got, want := err == nil, json.Valid(data); got != want {
			t.Fatalf("scanner accepts=%v (%v), json.Valid=%v for %q", got, err, want, data)
		}
	})
}

func TestArray(t *testing.T) {
	cases := []struct {
		in   string
		want []string
		err  string
	}{
		{`[]`, nil, ""},
		{` [ "a" , "b" ] `, []string{"a", "b"}, ""},
		{`["a" "b"]`, nil, `expected ',' or ']' in an array of names`},
		{`{"a":1}`, nil, `expected an array of names`},
		{`["a",]`, nil, `expected a string`},
		{`["a"`, nil, `unexpected end of input, expected ',' or ']' in an array of names`},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			s := jsonscan.Scanner{Data: []byte(tc.in)}
			var got []string
			err := s.Array("an array of names", func() error {
				v, err := s.Text()
				got = append(got, v)
				return err
			})
			if tc.err != "" {
				if err == nil || !errors.Is(err, jsonscan.ErrSyntax) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want a syntax error containing %q", err, tc.err)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestOptText(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{`null`, "", true},
		{`"x"`, "x", true},
		{`"\u00e9\/"`, "é/", true},
		{`1`, "", false},
	}
	for _, tc := range cases {
		s := jsonscan.Scanner{Data: []byte(tc.in)}
		got, err := s.OptText()
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("OptText(%s) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestEqualsKey(t *testing.T) {
	cases := []struct {
		raw     string
		escaped bool
		want    bool
	}{
		{`"uid"`, false, true},
		{`"u\u0069d"`, true, true},
		{`"uids"`, false, false},
		{`"ui"`, false, false},
	}
	for _, tc := range cases {
		if got := jsonscan.EqualsKey([]byte(tc.raw), tc.escaped, "uid"); got != tc.want {
			t.Errorf("EqualsKey(%s) = %v, want %v", tc.raw, got, tc.want)
		}
	}
}
