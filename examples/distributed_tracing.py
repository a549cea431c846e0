"""Distributed tracing: an orchestration's spans, from the caller down to each activity and timer.

The orchestrator calls an activity, waits on a 2-second durable timer, and calls a second
activity. The program installs an OpenTelemetry TracerProvider before starting the engine; dtrio
uses whichever provider the application set. Spans go to the console (one line each, as they
end), or to an OTLP collector when OTEL_EXPORTER_OTLP_ENDPOINT is set and an OTLP exporter
package is installed (`pip install opentelemetry-exporter-otlp-proto-http`). Lifecycle logs go
to stderr, as text or JSON lines.

Run:  python examples/distributed_tracing.py [--db PATH] [--log-format text|json]
"""

import argparse
import os
import sys
from datetime import timedelta

import trio
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanProcessor,
)

import dtrio
from dtrio.logs import configure_logging

registry = dtrio.Registry()
tracer = trace.get_tracer("examples.distributed_tracing")


@registry.activity
async def say_hello(ctx: dtrio.ActivityContext, city: str) -> str:
    return f"Hello, {city}!"


@registry.orchestrator
async def greet_twice(ctx: dtrio.OrchestrationContext, city: str) -> list[str]:
    first = await ctx.call_activity(say_hello, input=city)
    # Logged once, not again when the orchestrator is replayed.
    ctx.logger.info("greeted %s; the next greeting comes in 2 seconds", city)
    await ctx.create_timer(timedelta(seconds=2))
    second = await ctx.call_activity(say_hello, input=f"{city} again")
    return [first, second]


def one_line(span: ReadableSpan) -> str:
    """A span as one console line: name, kind, its ID, its parent's ID, duration."""
    parent = f"{span.parent.span_id:016x}" if span.parent else "-" * 16
    millis = (span.end_time - span.start_time) / 1e6
    status = f" {span.status.status_code.name}" if span.status.description else ""
    return (f"span {span.name:<34} {span.kind.name:<8} id={span.context.span_id:016x} "
            f"parent={parent} {millis:9.1f} ms{status}\n")


def otlp_exporter() -> SpanExporter | None:
    """An OTLP exporter if one is configured by the environment and installed, else None."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        print("OTEL_EXPORTER_OTLP_ENDPOINT is set, but no OTLP exporter is installed "
              "(pip install opentelemetry-exporter-otlp-proto-http); exporting to the console",
              file=sys.stderr)
        return None
    return OTLPSpanExporter()  # reads the endpoint and headers from the environment


def install_tracing() -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "dtrio-example"}))
    exporter = otlp_exporter()
    processor: SpanProcessor
    if exporter is not None:
        processor = BatchSpanProcessor(exporter)
    else:
        processor = SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=one_line))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


async def main(db: str) -> None:
    async with dtrio.open_engine(registry, db=db) as engine:
        # The caller's span becomes the parent of create_orchestration||greet_twice.
        with tracer.start_as_current_span("handle request"):
            iid = await engine.client.schedule_new_orchestration(greet_twice, input="Tokyo")
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=30)
        print(f"{state.runtime_status.name}: {state.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="distributed_tracing.sqlite3", help="SQLite file to use")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    configure_logging("INFO", args.log_format)
    provider = install_tracing()
    try:
        trio.run(main, args.db)
    finally:
        provider.shutdown()  # flushes spans still queued for export
