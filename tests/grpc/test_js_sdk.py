"""The official JavaScript SDK (@microsoft/durabletask-js) against our sidecar.

`.ci/run` installs the SDK (`npm ci` in tests/grpc/js); `smoke.js` drives a sequence, a
fan-out, an external event and a terminate, `entities.js` a class entity (signals, a locked
call, get and query), `secure.js` a sequence over TLS with a token (and a client without it);
each exits 0 only if every check passed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import trio
from sidecar_harness import running_sidecar

JS = Path(__file__).parent / "js"


async def test_javascript_sdk_sequence_fan_out_event_terminate() -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed for the JavaScript SDK test (install nodejs)"
    assert (JS / "node_modules" / "@microsoft" / "durabletask-js").is_dir(), (
        "run `npm ci` in tests/grpc/js first (.ci/run does)"
    )
    async with running_sidecar() as sidecar:
        with trio.fail_after(90):
            done = await trio.run_process(
                [node, "smoke.js", sidecar.address], cwd=JS, capture_stdout=True,
                capture_stderr=True, check=False,
            )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()[-3000:]
    results = json.loads(out.strip().splitlines()[-1])
    assert results["sequence"] == {
        "status": "COMPLETED", "output": ["Hello, Tokyo!", "Hello, London!", "Hello, Seattle!"],
    }
    assert results["fanOut"] == {"status": "COMPLETED", "output": sum(i * i for i in range(20))}
    assert results["event"] == {"status": "COMPLETED", "output": "approved by ana"}
    assert results["terminate"] == {"status": "TERMINATED", "output": "stopped by test"}


async def test_javascript_sdk_entities_signal_call_lock_get_query() -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed for the JavaScript SDK test (install nodejs)"
    async with running_sidecar() as sidecar:
        with trio.fail_after(90):
            done = await trio.run_process(
                [node, "entities.js", sidecar.address], cwd=JS, capture_stdout=True,
                capture_stderr=True, check=False,
            )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()[-3000:]
    results = json.loads(out.strip().splitlines()[-1])
    # Signals 1 + 2 + 3, then a locked read-and-add doubles it.
    assert results["orchestration"] == {"status": "COMPLETED", "output": 12}
    assert results["entity"] == {"id": "@counter@js", "state": 12, "locked": None}
    assert results["missing"] is None
    assert results["query"] == ["@counter@js"]


async def test_javascript_sdk_over_tls_with_a_token(tmp_path: Path) -> None:
    from certs import make_pki

    node = shutil.which("node")
    assert node, "Node.js is needed for the JavaScript SDK test (install nodejs)"
    pki = make_pki(tmp_path)
    (tmp_path / "token").write_text("js-token-81d2\n")
    async with running_sidecar(tls_cert=pki.server_cert, tls_key=pki.server_key,
                               auth_token_file=tmp_path / "token") as sidecar:
        with trio.fail_after(90):
            done = await trio.run_process(
                [node, "secure.js", sidecar.address], cwd=JS, capture_stdout=True,
                capture_stderr=True, check=False, env={
                    **os.environ, "DTRIO_TEST_TOKEN": "js-token-81d2",
                    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(pki.ca)},
            )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()[-3000:]
    results = json.loads(out.strip().splitlines()[-1])
    assert results == {
        "sequence": {"status": "COMPLETED", "output": ["Hello, Tokyo!", "Hello, London!"]},
        "stranger": "UNAUTHENTICATED",
    }
