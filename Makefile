.PHONY: test run

# test runs every test once, with the race detector. The store's tests use
# the Redis servers named by REDIS_URL and REDIS_CLUSTER_URL when set
# (.ci/run starts them), and miniredis otherwise.
test:
	go test -race -count=1 ./...

# run starts the proxy with the configuration in the environment.
run:
	go run .
