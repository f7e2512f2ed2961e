# The sidecar's tests run a real Prometheus (src/prometheustest) and real
# Redis nodes (src/redistest); both are Debian packages.
APT_DEPS += prometheus:prometheus
