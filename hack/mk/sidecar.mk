# The sidecar's tests run a real Prometheus (src/testenv/prometheustest) and real
# Redis nodes (src/testenv/redistest); both are Debian packages.
APT_DEPS += prometheus:prometheus
