# Recipes for working on dtrio. `pip install -e '.[dev]'` puts `just` on PATH.

default: test

# the whole test suite (the same command .ci/run uses)
test *args:
    python -m pytest {{args}}

# the gRPC sidecar for the official Durable Task SDKs (port 4001, ./dtrio.sqlite3)
serve *args:
    python -m dtrio serve {{args}}

# an example orchestration on the embedded engine
demo *args:
    python -m dtrio demo {{args}}

# regenerate the betterproto2 classes and grpclib stubs from proto/
proto:
    rm -rf dtrio/_pb && mkdir -p dtrio/_pb
    python -m grpc_tools.protoc -I proto --python_betterproto2_out=dtrio/_pb --python_betterproto2_opt=client_generation=async,server_generation=async proto/orchestrator_service.proto

# benchmarks: print a table of medians
bench *args:
    python benchmarks/bench_embedded.py {{args}}

# dtrio beside DBOS and the SDK's reference backend (issue 7), one table;
# e.g. `just bench-peers --runs 3 --only embedded,latency --sync NORMAL`
bench-peers *args:
    python benchmarks/bench_peers.py {{args}}

lint:
    ruff check dtrio tests examples benchmarks
