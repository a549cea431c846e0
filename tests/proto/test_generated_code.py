"""The code generated from proto/ is what `just proto` generates today: nobody edited it by hand,
and nobody changed the .proto (or the generator) without regenerating."""

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_text()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_up_to_date(tmp_path):
    generate = _generator()
    generate.generate(tmp_path)
    fresh, ours = tmp_path / generate.MESSAGES, ROOT / generate.MESSAGES
    fresh_files, our_files = _files(fresh), _files(ours)
    assert fresh_files.keys() == our_files.keys()
    for name, text in fresh_files.items():
        assert our_files[name] == text, f"{generate.MESSAGES}/{name} differs: run `just proto`"
    assert filecmp.cmp(tmp_path / generate.STUBS, ROOT / generate.STUBS, shallow=False), (
        f"{generate.STUBS} differs: run `just proto`"
    )


def test_messages_and_stubs_are_apart():
    # The messages import no grpclib (the pure core imports them); the stubs use the messages'
    # own classes, so a handler decodes into the same types the rest of dtrio uses.
    messages = (ROOT / "dtrio" / "_pb" / "__init__.py").read_text()
    assert "grpclib" not in messages
    assert "TaskHubSidecarService" not in messages
    from dtrio import _pb as pb
    from dtrio.grpc._stubs import TaskHubSidecarServiceBase

    handler = TaskHubSidecarServiceBase().__mapping__()["/TaskHubSidecarService/StartInstance"]
    assert handler.request_type is pb.CreateInstanceRequest
    assert handler.reply_type is pb.CreateInstanceResponse
