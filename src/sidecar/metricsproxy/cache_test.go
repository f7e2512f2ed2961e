package metricsproxy

import (
	"bytes"
	"testing"
)

func newBody(v variant, ct, data string) *body {
	return &body{variant: v, contentType: ct, data: []byte(data)}
}

func TestCacheGet(t *testing.T) {
	text := variant{accept: "text/plain"}
	textGzip := variant{accept: "text/plain", acceptEncoding: "gzip"}
	any := variant{}
	tests := []struct {
		name   string
		stored []*body
		ask    variant
		want   string // "" for no body
	}{
		{"empty cache", nil, text, ""},
		{"exact variant", []*body{newBody(text, "text/plain", "a")}, text, "a"},
		{"exact variant wins over a newer compatible one",
			[]*body{newBody(text, "text/plain", "a"), newBody(any, "text/plain", "b")}, text, "a"},
		{"newest compatible body when no exact one",
			[]*body{newBody(text, "text/plain", "a"), newBody(textGzip, "text/plain", "b")}, any, "b"},
		{"gzip body not given to a client without gzip",
			[]*body{{variant: textGzip, contentType: "text/plain", contentEncoding: "gzip", data: []byte("z")}}, text, ""},
		{"another query is another resource",
			[]*body{newBody(variant{query: "a=1"}, "text/plain", "a")}, any, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(1 << 20)
			for _, b := range tt.stored {
				if !c.put(b) {
					t.Fatalf("put(%q) was refused", b.data)
				}
			}
			got := c.get(tt.ask)
			switch {
			case got == nil && tt.want != "":
				t.Fatalf("get = nil, want %q", tt.want)
			case got != nil && tt.want == "":
				t.Fatalf("get = %q, want nothing", got.data)
			case got != nil:
				if string(got.data) != tt.want {
					t.Errorf("get = %q, want %q", got.data, tt.want)
				}
				c.release(got)
			}
		})
	}
}

func TestCacheBounds(t *testing.T) {
	tests := []struct {
		name      string
		maxBytes  int64
		sizes     []int // one variant each, in order
		wantBytes int64
		wantKept  int
	}{
		{"within the cap", 100, []int{10, 20}, 30, 2},
		{"oldest evicted over the cap", 100, []int{60, 50}, 50, 1},
		{"larger than the cap not stored", 100, []int{10, 101}, 10, 1},
		{"variant count bounded", 1 << 20, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, maxVariants, maxVariants},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(tt.maxBytes)
			for i, n := range tt.sizes {
				c.put(&body{variant: variant{accept: string(rune('a' + i))}, data: make([]byte, n)})
			}
			gotBytes, gotKept := c.size()
			if gotBytes != tt.wantBytes || gotKept != tt.wantKept {
				t.Errorf("size() = %d bytes in %d bodies, want %d in %d", gotBytes, gotKept, tt.wantBytes, tt.wantKept)
			}
		})
	}
}

// TestCacheReusesBuffers checks that a replaced body's buffer serves the next
// body, but only once no reader still writes it to a client.
func TestCacheReusesBuffers(t *testing.T) {
	c := newCache(1 << 20)
	v := variant{}
	first := c.buffer(1000)
	first = append(first, "first"...)
	c.put(&body{variant: v, data: first})

	reader := c.get(v)
	second := append(c.buffer(1000), "second"...)
	c.put(&body{variant: v, data: second})
	if &c.buffer(1000)[:1][0] == &first[:1][0] {
		t.Fatal("the buffer of a body still being read was handed out again")
	}
	if !bytes.Equal(reader.data, []byte("first")) {
		t.Fatalf("a reader's body changed to %q", reader.data)
	}
	c.release(reader)
	if got := c.buffer(1000); &got[:1][0] != &first[:1][0] {
		t.Error("the buffer of a released body was not reused")
	}
}
