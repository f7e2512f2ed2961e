package reliability

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// transcript keeps everything the webhook said to anyone, to search it for
// the password at the end.
type transcript struct {
	texts []string
}

func (tr *transcript) add(where string, text string) {
	tr.texts = append(tr.texts, where+": "+text)
}

// do sends a request and records the answer's status line, headers and
// body.
func (tr *transcript) do(t *testing.T, c *http.Client, method, url, contentType string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		tr.add(method+" "+url, err.Error())
		return 0
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	tr.add(method+" "+url, fmt.Sprintf("%s %v %s", resp.Status, resp.Header, answer))
	return resp.StatusCode
}

// TestRedisPasswordNeverLeaks runs the webhook with a known password
// through a series of failures (a wrong password at start-up, nodes down,
// a node whose password changed under it, bad requests, lease API errors)
// and searches all it logged, every answer, its metrics and its command
// line and environment for the password.
func TestRedisPasswordNeverLeaks(t *testing.T) {
	secret := randomHex(t, 16)
	password := "pmph-password-" + secret
	e := newEnv(t, envOptions{password: password, args: []string{"--log-level=debug"}})
	wh := e.webhooks[0]
	tr := &transcript{}
	var logs []string
	var rotatedPassword string

	t.Run("wrong password at start-up", func(t *testing.T) {
		wrong := "pmph-wrong-" + randomHex(t, 16)
		bad := webhooktest.New(t, webhooktest.Options{Redis: e.webhookRedis(), RedisPassword: wrong, Certs: e.certs})
		if err := bad.Start(); err == nil {
			t.Fatal("the webhook started with a wrong password")
		}
		out := bad.Logs()
		logs = append(logs, out)
		if code := bad.ExitCode(); code != 1 {
			t.Fatalf("exit code %d, want 1", code)
		}
		if !strings.Contains(out, "rejected the password in") || !strings.Contains(out, "fix the password file or the Redis auth secret") {
			t.Fatalf("start-up failure does not say the password was rejected:\n%s", out)
		}
		if strings.Contains(out, wrong) || strings.Contains(out, wrong[len("pmph-wrong-"):]) {
			t.Fatalf("the log holds the wrong password:\n%s", out)
		}
	})

	client := wh.Client()
	review := func(uid string) int {
		return tr.do(t, client, http.MethodPost, wh.MutateURL(), "application/json",
			reviewBody(uid, pod{key: "secret", size: 3, startupTimeout: time.Minute}))
	}
	lease := func(path string, body string) int {
		return tr.do(t, client, http.MethodPost, wh.BaseURL()+path, "application/json", []byte(body))
	}
	holder := strings.Repeat("0f", 16)

	t.Run("healthy, with bad requests", func(t *testing.T) {
		if code := review("ok"); code != 200 {
			t.Fatalf("review: %d", code)
		}
		for _, r := range []struct {
			method, path, ct, body string
		}{
			{http.MethodPost, "/mutate", "application/json", `{"request":`},
			{http.MethodPost, "/mutate", "text/plain", `{}`},
			{http.MethodGet, "/mutate", "", ``},
			{http.MethodPost, "/nothing-here", "application/json", `{}`},
			{http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"reliability","key":"secret","slot":0,"holder":"XYZ"}`},
			{http.MethodPost, leaseapi.RenewPath, "application/json", `{"namespace":"reliability","key":"secret","slot":2,"holder":"` + holder + `"}`},
			{http.MethodPost, leaseapi.AcquirePath, "application/json", `{"namespace":"reliability","key":"secret","slot":0,"holder":"` + holder + `","size":0}`},
		} {
			tr.do(t, client, r.method, wh.BaseURL()+r.path, r.ct, []byte(r.body))
		}
	})

	t.Run("two nodes down", func(t *testing.T) {
		heal := under(t, e, both(killNode(0), killNode(1)))
		defer heal()
		if code := review("no-quorum"); code != 200 {
			t.Fatalf("review: %d", code)
		}
		lease(leaseapi.RenewPath, `{"namespace":"reliability","key":"secret","slot":0,"holder":"`+holder+`"}`)
		lease(leaseapi.ReleasePath, `{"namespace":"reliability","key":"secret","slot":0,"holder":"`+holder+`"}`)
		lease(leaseapi.AcquirePath, `{"namespace":"reliability","key":"secret","slot":0,"holder":"`+holder+`","size":3}`)
	})

	t.Run("nodes whose password changed", func(t *testing.T) {
		// The password changes on two nodes and their connections are
		// dropped: every new connection of the webhook is refused with an
		// authentication error, which it logs and answers with.
		rotated := "pmph-rotated-" + randomHex(t, 16)
		var admins []redis.Conn
		for _, n := range e.redis.Nodes[:2] {
			admin, err := redis.Dial("tcp", n.Addr(), redis.DialPassword(password))
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close()
			admins = append(admins, admin)
			if _, err := admin.Do("CONFIG", "SET", "requirepass", rotated); err != nil {
				t.Fatal(err)
			}
			if _, err := admin.Do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"); err != nil {
				t.Fatal(err)
			}
		}
		defer func() {
			for _, admin := range admins {
				if _, err := admin.Do("CONFIG", "SET", "requirepass", password); err != nil {
					t.Errorf("restoring the password: %v", err)
				}
			}
		}()
		for i := range 3 {
			review("rotated-" + strconv.Itoa(i))
		}
		lease(leaseapi.RenewPath, `{"namespace":"reliability","key":"secret","slot":0,"holder":"`+holder+`"}`)
		// The failure path was taken: the nodes refused the old password.
		if !strings.Contains(strings.Join(tr.texts, "\n"), "WRONGPASS") && !wh.WaitLog("WRONGPASS", 5*time.Second) {
			t.Fatalf("no authentication failure seen; the answers were:\n%s", strings.Join(tr.texts[len(tr.texts)-4:], "\n"))
		}
		for _, text := range tr.texts {
			if strings.Contains(text, rotated) {
				t.Fatalf("an answer holds the rotated password: %s", text)
			}
		}
		rotatedPassword = rotated // searched for at the end, once the log is complete
	})

	t.Run("metrics and probes", func(t *testing.T) {
		plain := &http.Client{Timeout: 5 * time.Second}
		for _, u := range []string{wh.MetricsURL(), wh.HealthzURL(), wh.ReadyzURL()} {
			tr.do(t, plain, http.MethodGet, u, "", nil)
		}
	})

	t.Run("command line and environment", func(t *testing.T) {
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", wh.Pid(), f))
			if err != nil {
				t.Fatal(err)
			}
			tr.add("/proc/pid/"+f, string(b))
		}
	})

	// The webhook buffers its log (flushed every 100 ms and at exit): the
	// search starts once it stopped.
	if code, err := wh.Stop(); code != 0 || err != nil {
		t.Fatalf("stop: exit %d, %v", code, err)
	}
	debugLogged := strings.Contains(wh.Logs(), `"level":"debug"`)
	logs = append(logs, wh.Logs())
	if rotatedPassword != "" && strings.Contains(wh.Logs(), rotatedPassword) {
		t.Error("the log holds the rotated password")
	}
	if !debugLogged {
		t.Fatalf("the webhook logged nothing at debug level: the search would miss what only debug logs say; log:\n%s", wh.Logs())
	}
	for _, where := range [][]string{tr.texts, logs} {
		for _, text := range where {
			if strings.Contains(text, secret) {
				t.Errorf("the Redis password appears in: %s", truncate([]byte(text)))
			}
		}
	}
	t.Logf("searched %d answers and %d bytes of log for the password", len(tr.texts), len(strings.Join(logs, "")))
}
