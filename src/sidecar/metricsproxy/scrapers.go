package metricsproxy

import (
	"net"
	"net/http"
	"sort"
	"sync"
	"time"
)

// maxScrapers bounds the scrapers remembered; a pod is scraped by one or
// two Prometheus servers, a few more during a migration.
const maxScrapers = 16

// scraper is what is known of one client that scrapes the metrics path.
type scraper struct {
	lastArrived time.Time
	// variant and servedStoredAt describe the last scrape answered in
	// full: how it asked, and the time stamp of the body it got (zero
	// when the body was not kept).
	variant        variant
	servedStoredAt time.Time
	answeredOnce   bool
}

// scrapers tracks the scrapers by IP address. Behind a proxy that hides
// them (a service mesh's sidecar), every scraper counts as one.
type scrapers struct {
	mu sync.Mutex
	by map[string]*scraper
}

func scraperOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *scrapers) get(id string, now time.Time) *scraper {
	if s.by == nil {
		s.by = map[string]*scraper{}
	}
	sc := s.by[id]
	if sc == nil {
		if len(s.by) >= maxScrapers {
			s.evictOldest()
		}
		sc = &scraper{lastArrived: now}
		s.by[id] = sc
	}
	return sc
}

func (s *scrapers) evictOldest() {
	var oldest string
	for id, sc := range s.by {
		if oldest == "" || sc.lastArrived.Before(s.by[oldest].lastArrived) {
			oldest = id
		}
	}
	delete(s.by, oldest)
}

func (s *scrapers) arrived(id string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.get(id, now).lastArrived = now
}

func (s *scrapers) answered(id string, v variant, storedAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := s.get(id, time.Now())
	sc.variant, sc.servedStoredAt, sc.answeredOnce = v, storedAt, true
}

// pending lists, sorted, the scrapers that arrived since the given time and
// were not last answered with the body kept now for the way they ask
// (current returns its time stamp). A scraper whose way of asking has no
// body kept cannot get one, so it is not waited for.
func (s *scrapers) pending(since time.Time, current func(variant) time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for id, sc := range s.by {
		if sc.lastArrived.Before(since) {
			continue
		}
		if !sc.answeredOnce {
			out = append(out, id)
			continue
		}
		if cur := current(sc.variant); !cur.IsZero() && !sc.servedStoredAt.Equal(cur) {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}
