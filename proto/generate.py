"""Regenerate the code generated from proto/ (`just proto`). Never edit that code by hand.

- `dtrio/_pb/`: the betterproto2 messages, with no client or server, so they import no grpclib;
- `dtrio/grpc/_stubs.py`: the grpclib service stub and base over those messages, written by the
  plugin beside this file (proto/grpclib_stubs.py).

`python proto/generate.py [ROOT]` writes under ROOT, the repository by default;
tests/proto/test_generated_code.py generates into a temporary ROOT and compares.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = PROTO_DIR / "orchestrator_service.proto"
STUBS_PLUGIN = PROTO_DIR / "grpclib_stubs.py"
MESSAGES = "dtrio/_pb"
STUBS = "dtrio/grpc/_stubs.py"


def protoc(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", *args, str(PROTO_FILE)],
        check=True,
    )


def generate(root: Path) -> None:
    messages = root / MESSAGES
    stubs = root / STUBS
    shutil.rmtree(messages, ignore_errors=True)
    messages.mkdir(parents=True)
    stubs.parent.mkdir(parents=True, exist_ok=True)
    protoc(
        f"--python_betterproto2_out={messages}",
        "--python_betterproto2_opt=client_generation=none,server_generation=none",
    )
    protoc(
        f"--plugin=protoc-gen-grpclib_stubs={STUBS_PLUGIN}",
        f"--grpclib_stubs_out={stubs.parent}",
        f"--grpclib_stubs_opt=messages={MESSAGES.replace('/', '.')},file={stubs.name},"
        "client_generation=async,server_generation=async",
    )


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR.parent)
