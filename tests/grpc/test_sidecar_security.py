"""The sidecar's door: TLS (mutual with a client CA), a token that every RPC but Hello must
carry, a warning when it listens beyond this machine without one, the token kept out of the
logs, and a bound on the calls one connection may have open."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import sdk_app as app
import trio
from certs import Pki, make_pki
from durabletask import client as sdk_client
from durabletask.internal import orchestrator_service_pb2 as sdk_pb
from sidecar_harness import running_sidecar, sdk_worker_running
from sidecar_process import wait_until
from test_sidecar_cli import serve
from test_sidecar_logs import records, sidecar

import dtrio
from dtrio.grpc import serve_sidecar

HERE = Path(__file__).parent
TOKEN = "tok-3f9a5e0c"
SERVICE = sdk_pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}  \n")  # what `echo` writes, and stray spaces: both ignored
    return path


def door(pki: Pki, token_file: Path | None, **more: Any) -> dict[str, Any]:
    """serve_sidecar's options for TLS with `pki`'s server certificate (and the token)."""
    options = {"tls_cert": pki.server_cert, "tls_key": pki.server_key, **more}
    if token_file is not None:
        options["auth_token_file"] = token_file
    return options


def channel(address: str, pki: Pki, *, client_cert: bool = False) -> grpc.Channel:
    """A grpcio channel trusting `pki`'s CA (presenting its client certificate if asked), on a
    connection of its own."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(address, credentials,
                               options=[("grpc.use_local_subchannel_pool", 1)])


def call(ch: grpc.Channel, rpc: str, request: bytes = b"", *, token: str | None = None,
         header: str | None = None, timeout: float = 10) -> grpc.StatusCode:
    """The status of calling `rpc` with `request` (bytes as sent), with `Bearer <token>` or
    `header` as its authorization; a stream's status once it ends or fails."""
    metadata = []
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    if header is not None:
        metadata.append(("authorization", header))
    path = f"/TaskHubSidecarService/{rpc}"
    try:
        if SERVICE.methods_by_name[rpc].server_streaming:
            for _ in ch.unary_stream(path)(request, metadata=metadata, timeout=timeout):
                pass
        else:
            ch.unary_unary(path)(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


# -- the token ------------------------------------------------------------------------------


async def test_every_rpc_but_hello_needs_the_token_the_stream_of_work_items_too(
    pki: Pki, token_file: Path,
) -> None:
    async with running_sidecar(**door(pki, token_file)) as sidecar_:
        ch = channel(sidecar_.address, pki)
        start = sdk_pb.CreateInstanceRequest(
            name="sequence", instanceId="refused").SerializeToString()
        for header in (None, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
                       TOKEN, "Bearer", "Bearer "):
            codes = {rpc: await in_thread(call, ch, rpc, header=header)
                     for rpc in SERVICE.methods_by_name}
            assert codes.pop("Hello") == grpc.StatusCode.OK
            assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, (header, codes)
            assert await in_thread(call, ch, "StartInstance", start, header=header) == (
                grpc.StatusCode.UNAUTHENTICATED)
        # Nothing a refused call asked for was done.
        assert await sidecar_.engine.client.get_orchestration_state("refused") is None
        # The scheme is case-insensitive, as HTTP's are.
        assert await in_thread(call, ch, "StartInstance", start, header=f"bearer {TOKEN}") == (
            grpc.StatusCode.OK)
        assert await sidecar_.engine.client.get_orchestration_state("refused") is not None
        ch.close()


def test_the_python_sdk_over_tls_with_the_token_and_nothing_without_it(
    tmp_path: Path, pki: Pki, token_file: Path,
) -> None:
    log = tmp_path / "sidecar.log"
    # At DEBUG for dtrio and the libraries: the token must stay out of even those lines.
    args = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--auth-token-file", str(token_file), "--log-level", "debug",
            "--library-log-level", "debug")
    with sidecar(log, args) as address:
        env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(pki.ca)}

        def sdk(*token: str) -> dict[str, Any]:
            done = subprocess.run([sys.executable, "secure_sdk_app.py", address, *token],
                                  cwd=HERE, env=env, capture_output=True, text=True, timeout=90)
            assert done.returncode == 0, done.stdout + done.stderr[-3000:]
            return json.loads(done.stdout.strip().splitlines()[-1])

        assert sdk(TOKEN) == {
            "sequence": {"status": "COMPLETED",
                         "output": ["Hello, Tokyo!", "Hello, London!", "Hello, Seattle!"]},
            "approval": {"status": "COMPLETED", "output": {"approved": "event-payload-77aa"}},
        }
        refused = sdk()
        assert refused["error"] == "UNAUTHENTICATED", refused
        assert "authorization: Bearer <token>" in refused["details"], refused
    text = log.read_text()
    assert TOKEN not in text
    # Payloads only in DEBUG lines (dtrio's per-step lines, the libraries' frame dumps).
    shown = "\n".join(m for level, _, m in records(log) if level not in {"DEBUG"})
    assert "TLS, token required" in shown
    for payload in ("input-payload-51c0", "event-payload-77aa", "Hello, "):
        assert payload not in shown, shown


async def test_a_wrong_token_file_is_refused_before_serving(tmp_path: Path) -> None:
    async with dtrio.open_engine(dtrio.Registry(), local_workers=False) as engine:
        for text, error in (("", "is empty"), (" \n\t\n", "is empty"),
                            ("two\nlines", "holds characters a header cannot carry"),
                            ("café", "one line of printable ASCII")):
            (tmp_path / "token").write_text(text)
            with pytest.raises(dtrio.InvalidInput, match=error):
                await serve_sidecar(engine, port=0, auth_token_file=tmp_path / "token")
        with pytest.raises(dtrio.InvalidInput, match="cannot read the auth token file"):
            await serve_sidecar(engine, port=0, auth_token_file=tmp_path / "missing")


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_serve_with_a_missing_or_empty_token_file_is_a_one_line_error(
    tmp_path: Path, content: str | None,
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    db = tmp_path / "x.sqlite3"
    # Given as its variable, as every flag can be.
    process = serve("--port", "0", "--db", str(db), env={"DTRIO_AUTH_TOKEN_FILE": str(path)})
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    expected = (f"dtrio: cannot read the auth token file {str(path)!r}: No such file or "
                "directory" if content is None else f"dtrio: the auth token file {str(path)!r} "
                "is empty")
    assert err.splitlines() == [expected], err
    assert not db.exists()


# -- TLS ------------------------------------------------------------------------------------


async def test_mutual_tls_serves_only_clients_with_a_certificate_of_the_ca(pki: Pki) -> None:
    async with running_sidecar(**door(pki, None, tls_client_ca=pki.ca)) as sidecar_:
        without, with_cert = channel(sidecar_.address, pki), channel(
            sidecar_.address, pki, client_cert=True)
        assert await in_thread(call, without, "Hello", timeout=5) == grpc.StatusCode.UNAVAILABLE
        assert await in_thread(call, with_cert, "Hello") == grpc.StatusCode.OK
        assert await in_thread(call, with_cert, "GetInstance", sdk_pb.GetInstanceRequest(
            instanceId="x").SerializeToString()) == grpc.StatusCode.OK
        without.close()
        with_cert.close()


async def test_a_plaintext_client_of_a_tls_sidecar_gets_nothing_and_the_sidecar_stays_up(
    pki: Pki,
) -> None:
    async with running_sidecar(**door(pki, None)) as sidecar_:
        plain = grpc.insecure_channel(sidecar_.address)
        assert await in_thread(call, plain, "Hello", timeout=5) == grpc.StatusCode.UNAVAILABLE
        plain.close()
        ch = channel(sidecar_.address, pki)
        assert await in_thread(call, ch, "Hello") == grpc.StatusCode.OK
        ch.close()


@pytest.mark.parametrize(("options", "error"), [
    ({"tls_cert": "c.pem"}, "TLS needs both a certificate and its key"),
    ({"tls_key": "k.pem"}, "TLS needs both a certificate and its key"),
    ({"tls_client_ca": "ca.pem"}, "a TLS client CA .* needs TLS"),
    ({"tls_cert": "missing.pem", "tls_key": "missing.pem"}, "cannot read the TLS file"),
])
async def test_incomplete_or_missing_tls_files_are_refused(
    options: dict[str, str], error: str,
) -> None:
    async with dtrio.open_engine(dtrio.Registry(), local_workers=False) as engine:
        with pytest.raises(dtrio.InvalidInput, match=error):
            await serve_sidecar(engine, port=0, **options)


async def test_a_key_that_is_not_the_certificates_is_refused(pki: Pki) -> None:
    async with dtrio.open_engine(dtrio.Registry(), local_workers=False) as engine:
        with pytest.raises(dtrio.InvalidInput, match="its own unencrypted PEM private key"):
            await serve_sidecar(engine, port=0, tls_cert=pki.server_cert, tls_key=pki.client_key)


# -- the warning ----------------------------------------------------------------------------


@asynccontextmanager
async def listening(host: str, **options: Any) -> AsyncIterator[None]:
    async with dtrio.open_engine(dtrio.Registry(), local_workers=False) as engine:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_sidecar, engine, host, 0, **options))
            yield
            nursery.cancel_scope.cancel()


async def test_listening_beyond_this_machine_without_a_token_or_tls_is_warned_of(
    caplog: pytest.LogCaptureFixture, pki: Pki, token_file: Path,
) -> None:
    def warnings() -> list[str]:
        found = [r.getMessage() for r in caplog.records
                 if r.name == "dtrio.grpc" and r.levelno == logging.WARNING]
        caplog.clear()
        return found

    caplog.set_level(logging.INFO, logger="dtrio")
    async with listening("0.0.0.0"):
        pass
    [line] = warnings()
    assert "listens on 0.0.0.0, beyond this machine, without an auth token" in line
    async with listening("0.0.0.0", auth_token_file=token_file):
        pass
    [line] = warnings()
    assert "without TLS: the auth token crosses the network in clear" in line
    async with listening("0.0.0.0", **door(pki, token_file)):
        pass
    async with listening("127.0.0.1"):
        pass
    async with listening("localhost"):
        pass
    assert warnings() == []


# -- per-connection limits ------------------------------------------------------------------


@contextmanager
def raw_h2(address: str) -> Iterator[tuple[socket.socket, h2.connection.H2Connection]]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        yield sock, conn


def grpc_headers(rpc: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", f"/TaskHubSidecarService/{rpc}"),
            (":authority", "dtrio"), ("content-type", "application/grpc"), ("te", "trailers")]


async def test_a_client_that_ignores_the_stream_limit_loses_its_connection_not_others_turn(
) -> None:
    async with running_sidecar(max_concurrent_streams=8) as sidecar_:
        seen = await in_thread(flood_and_serve, sidecar_)
    assert seen == {"limit": 8, "closed": True, "other client": None}


def flood_and_serve(sidecar_: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with raw_h2(sidecar_.address) as (sock, conn):
        while "limit" not in seen:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(
                        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                    if changed is not None and changed.new_value == 8:
                        seen["limit"] = 8
            sock.sendall(conn.data_to_send())  # the acknowledgement
        # A client that ignores the limit: h2 would refuse to open the 9th stream, so the
        # frames are written by a connection that believes the limit is 1,000.
        conn.remote_settings.update({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        conn.remote_settings.acknowledge()
        request = sdk_pb.GetInstanceRequest(instanceId="waits").SerializeToString()
        message = b"\0" + len(request).to_bytes(4, "big") + request
        for _ in range(1000):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, grpc_headers("WaitForInstanceCompletion"))
            conn.send_data(stream, message, end_stream=True)
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            pass  # the sidecar may have closed it before every stream was written
        closed = False
        while not closed:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            closed = not data or any(isinstance(e, h2.events.ConnectionTerminated)
                                     for e in conn.receive_data(data))
        seen["closed"] = closed
    # Another client is served as before.
    client = sdk_client.TaskHubGrpcClient(host_address=sidecar_.address)
    seen["other client"] = client.get_orchestration_state("anything")
    return seen


async def test_a_client_with_1000_calls_open_gets_8_at_a_time_while_another_is_served() -> None:
    async with running_sidecar(max_concurrent_streams=8) as sidecar_, \
            sdk_worker_running(sidecar_.address):
        client = sidecar_.client
        waits = await sidecar_.call(client.schedule_new_orchestration, app.approval,
                                    instance_id="waits")
        await sidecar_.call(client.wait_for_orchestration_start, waits, timeout=30)
        flood = grpc.insecure_channel(sidecar_.address,
                                      options=[("grpc.use_local_subchannel_pool", 1)])
        wait = flood.unary_unary("/TaskHubSidecarService/WaitForInstanceCompletion")
        request = sdk_pb.GetInstanceRequest(instanceId=waits).SerializeToString()
        calls = [wait.future(request, timeout=120) for _ in range(1000)]
        changes = sidecar_.engine.client.commands._changes

        def waiting() -> int:
            return changes.waiting(waits)

        await in_thread(wait_until, "the first calls wait", lambda: waiting() >= 8)
        # Meanwhile, another client (a connection of its own) starts and finishes its work.
        state = await sidecar_.run(app.sequence)
        assert state.runtime_status == sdk_client.OrchestrationStatus.COMPLETED
        assert waiting() == 8
        await sidecar_.call(client.raise_orchestration_event, waits, "approval", data="yes")
        replies = await in_thread(lambda: [c.result() for c in calls])
        assert {sdk_pb.GetInstanceResponse.FromString(r).orchestrationState.orchestrationStatus
                for r in replies} == {sdk_pb.ORCHESTRATION_STATUS_COMPLETED}
        flood.close()
