.PHONY: test run fuzz

# test runs every test once, with the race detector. The store's tests use
# the Redis servers named by REDIS_URL and REDIS_CLUSTER_URL when set
# (.ci/run starts them), and miniredis otherwise.
test:
	go test -race -count=1 ./...

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
	go test -run '^$$' -fuzz '^FuzzCallbackQuery$$' -fuzztime $(FUZZTIME) ./auth/
