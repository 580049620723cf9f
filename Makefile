.PHONY: test run fuzz redis-server promtool

# test runs every test once, with the race detector. The store's tests use
# the Redis servers named by REDIS_URL, REDIS_CLUSTER_URL and
# REDIS_SENTINEL_URL when set (.ci/run starts them), and miniredis
# otherwise; the fault tests start redis-server processes of their own, and
# the deploy tests run promtool on the alerts. Packages run one at a time
# (-p 1): their fault tests (Redis restarts under load, replicas pacing a
# burst) each keep the machine's cores busy, and one package's load must
# not push another's events past their deadlines.
test: redis-server promtool
	go test -race -count=1 -p 1 ./...

# redis-server installs Redis from the distribution's packages when it is
# missing (Debian or Ubuntu, as root or with sudo): the fault tests run it.
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server (the fault tests start their own)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# promtool installs Prometheus's rule checker when it is missing (taken out of
# the distribution's prometheus package, which is not installed; as root or
# with sudo): TestPromtoolRules fails without it.
promtool:
	@command -v promtool >/dev/null || .ci/install-promtool

# run starts the proxy with the configuration in the environment.
run:
	go run .

# fuzz runs every fuzz target for FUZZTIME each, one at a time (their seed
# corpora under testdata/fuzz also run, quickly, in make test).
FUZZTIME ?= 15s
fuzz:
	go test -run '^$$' -fuzz '^FuzzValidTenant$$' -fuzztime $(FUZZTIME) ./proxy/
	go test -run '^$$' -fuzz '^FuzzRequestPath$$' -fuzztime $(FUZZTIME) ./proxy/
	go test -run '^$$' -fuzz '^FuzzOpenSealed$$' -fuzztime $(FUZZTIME) ./store/
	go test -run '^$$' -fuzz '^FuzzAllowedReturn$$' -fuzztime $(FUZZTIME) ./auth/
	go test -run '^$$' -fuzz '^FuzzCallbackQuery$$' -fuzztime $(FUZZTIME) ./admin/
