import os
from collections.abc import Iterator

import pytest
import trio.testing
from hypothesis import HealthCheck, settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pg_cluster import fresh_database, postgres_server

# Property-based tests: "ci" (the default) is deterministic and bounded, so that CI stays quick
# and a failure repeats; HYPOTHESIS_PROFILE=long runs many more examples, seeded at random.
settings.register_profile(
    "ci", max_examples=25, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=1000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))



@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the whole session (see pg_cluster.py)."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """The URL of a fresh, empty database for one test."""
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Where an engine test's store is: in memory (None), or a fresh PostgreSQL database. The
    tests that take it are those whose behaviour rests on storage."""
    if request.param == "memory":
        yield None
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def mock_clock():
    """A MockClock that jumps whenever every task is blocked: durable time runs instantly."""
    return trio.testing.MockClock(autojump_threshold=0)


# -- the span recorder ------------------------------------------------------------------------


class _Gate(SpanProcessor):
    """Passes ended spans on only while a test records: the global provider outlives the test."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.open = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.open:
            self.inner.on_end(span)


_EXPORTER = InMemorySpanExporter()
_GATE = _Gate(SimpleSpanProcessor(_EXPORTER))
_installed = False


def _install() -> None:
    """The global provider can be set once per process: set ours, or join one set earlier."""
    global _installed
    if _installed:
        return
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    trace.get_tracer_provider().add_span_processor(_GATE)
    _installed = True


@pytest.fixture
def spans():
    _install()
    _EXPORTER.clear()
    _GATE.open = True
    try:
        yield _EXPORTER
    finally:
        _GATE.open = False
        _EXPORTER.clear()
