"""The official JavaScript SDK (@microsoft/durabletask-js) against our sidecar.

`.ci/run` installs the SDK (`npm ci` in tests/grpc/js); `smoke.js` drives a sequence, a
fan-out, an external event and a terminate, `entities.js` a class entity (signals, a locked
call, get and query); each exits 0 only if every check passed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import trio
from conftest import running_sidecar

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
