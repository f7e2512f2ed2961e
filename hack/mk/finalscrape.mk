# The final scrape measured on the real node (e2e/node,
# TestFinalScrapeOnTheNode): opted-in pods of the counting app, a real
# Prometheus that discovers pods and scrapes them through their sidecars,
# all pods of a batch deleted at once, and the last stored sample of each
# compared with the value the app logged at its exit. `make test` runs the
# short version (5 pods at 15 s) with the other Go tests.
#
#   make final-scrape   FINAL_SCRAPE_PODS pods (default 20) per Prometheus scrape
#                       interval in FINAL_SCRAPE_INTERVALS (default 15s,60s); the
#                       distribution is written into docs/reliability.md
#                       (about 10 minutes on 2 cores)

FINAL_SCRAPE_PODS      ?= 20
FINAL_SCRAPE_INTERVALS ?= 15s,60s

.PHONY: final-scrape
final-scrape: apt-deps tools
	PMPH_FINAL_SCRAPE_PODS=$(FINAL_SCRAPE_PODS) PMPH_FINAL_SCRAPE_INTERVALS=$(FINAL_SCRAPE_INTERVALS) \
	PMPH_FINAL_SCRAPE_REPORT=$(ROOT)/docs/reliability.md \
		$(GO) test -race -count=1 -timeout 60m -v -run '^TestFinalScrapeOnTheNode$$' ./e2e/node/
