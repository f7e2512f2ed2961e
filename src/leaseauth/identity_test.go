package leaseauth

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
)

func TestIdentity(t *testing.T) {
	v := &Verifier{cfg: Config{Audience: "aud"}}
	bound := authnv1.UserInfo{
		Username: "system:serviceaccount:team-a:default",
		Extra:    map[string]authnv1.ExtraValue{ExtraPodName: {"web-0"}, ExtraPodUID: {"0b7c"}},
	}
	cases := []struct {
		name   string
		status authnv1.TokenReviewStatus
		want   Identity
		cause  string
	}{
		{"pod-bound", authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"aud"}, User: bound},
			Identity{Namespace: "team-a", ServiceAccount: "default", PodName: "web-0", PodUID: "0b7c"}, ""},
		{"refused", authnv1.TokenReviewStatus{Error: "token has expired"}, Identity{}, CauseInvalid},
		{"other audience", authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"api"}, User: bound}, Identity{}, CauseInvalid},
		{"a user", authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"aud"}, User: authnv1.UserInfo{Username: "alice"}}, Identity{}, CauseNotPodTied},
		{"no pod", authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"aud"}, User: authnv1.UserInfo{Username: bound.Username}}, Identity{}, CauseNotPodTied},
		{"no uid", authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"aud"}, User: authnv1.UserInfo{
			Username: bound.Username, Extra: map[string]authnv1.ExtraValue{ExtraPodName: {"web-0"}}}}, Identity{}, CauseNotPodTied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := v.identity(tc.status)
			if tc.cause == "" {
				if err != nil || id != tc.want {
					t.Fatalf("got %+v, %v; want %+v", id, err, tc.want)
				}
				return
			}
			e, ok := err.(*Error)
			if !ok || e.Cause != tc.cause || !strings.HasPrefix(e.Message, "the ") {
				t.Fatalf("got %+v, %v; want an *Error with cause %s", id, err, tc.cause)
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	jwt := func(payload string) string {
		return "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".c2ln"
	}
	cases := []struct {
		token string
		want  time.Time
		ok    bool
	}{
		{jwt(`{"exp":1700000000}`), time.Unix(1700000000, 0), true},
		{jwt(`{"iat":1}`), time.Time{}, false},
		{jwt(`not json`), time.Time{}, false},
		{"opaque-token", time.Time{}, false},
		{"a.%%%.c", time.Time{}, false},
	}
	for _, tc := range cases {
		got, ok := expiry(tc.token)
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("expiry(%q) = %v, %v; want %v, %v", tc.token, got, ok, tc.want, tc.ok)
		}
	}
}
