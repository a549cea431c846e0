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

# regenerate from proto/ the betterproto2 messages (dtrio/_pb, no grpclib) and, apart from
# them, the grpclib service stubs (dtrio/grpc/_stubs.py); never edit either by hand
proto:
    python proto/generate.py

# benchmarks: print a table of medians
bench *args:
    python benchmarks/bench_embedded.py {{args}}

# dtrio beside DBOS and the SDK's reference backend, one table;
# e.g. `just bench-peers --runs 3 --only embedded,latency --sync NORMAL`
bench-peers *args:
    python benchmarks/bench_peers.py {{args}}

lint:
    ruff check dtrio tests examples benchmarks proto
