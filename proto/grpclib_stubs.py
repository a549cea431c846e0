#!/usr/bin/env python
"""protoc plugin: betterproto2's grpclib service stubs, in a module apart from the messages.

betterproto2_compiler writes a package's messages and its grpclib service classes into one
module, so importing a message would import grpclib. dtrio keeps its messages (`dtrio._pb`,
generated with `client_generation=none,server_generation=none`) free of grpclib, and runs this
plugin over the same .proto for the services alone: the compiler's own templates render the
client stub and the server base, with the messages imported from the messages module.

`just proto` runs both. Options (`--grpclib_stubs_opt=...`):
    messages=dtrio._pb         the module the messages were generated into (required)
    file=_stubs.py             the module to write, under the `--grpclib_stubs_out` directory
    client_generation=async    passed on to betterproto2_compiler, as is server_generation
"""

from __future__ import annotations

import dataclasses
import sys
from unittest import mock

from betterproto2_compiler.lib.google.protobuf.compiler import (
    CodeGeneratorRequest,
    CodeGeneratorResponse,
    CodeGeneratorResponseFeature,
    CodeGeneratorResponseFile,
)
from betterproto2_compiler.plugin import parser
from betterproto2_compiler.plugin.compiler import outputfile_compiler
from betterproto2_compiler.plugin.models import OutputTemplate


def _absolute(line: str, messages: str) -> str:
    """An import the compiler wrote relative to the messages' package, made absolute."""
    if line.startswith("from . import "):
        return f"from {messages} import " + line.removeprefix("from . import ")
    if line.startswith("from .") and not line.startswith("from .."):
        return f"from {messages}." + line.removeprefix("from .")
    if line.startswith("from .."):
        raise ValueError(f"cannot place {line!r} outside the messages' package")
    return line


def render_services(output_file: OutputTemplate, messages: str) -> str:
    """The module of `output_file`'s services alone, importing their messages from `messages`."""
    if output_file.package:
        # gRPC paths carry the package; ours is empty (`/TaskHubSidecarService/Hello`), and a
        # package would put the messages in a subpackage of `messages` too.
        raise ValueError(f"proto package {output_file.package!r}: only the empty one is supported")
    names = set()
    for service in output_file.services.values():
        for method in service.methods:
            for ref in (method.py_input_message_type, method.py_output_message_type):
                if "." not in ref:
                    names.add(ref)
    # Resolving the references above recorded the imports they need (relative ones).
    imports = {_absolute(line, messages) for line in output_file.imports_end}
    if names:
        imports.add(f"from {messages} import {', '.join(sorted(names))}")
    services_only = dataclasses.replace(output_file, messages={}, enums={}, imports_end=imports)
    note = f"# The services alone, by proto/grpclib_stubs.py; their messages are in {messages}.\n"
    return note + outputfile_compiler(services_only)


def generate(request: CodeGeneratorRequest) -> CodeGeneratorResponse:
    options = dict(opt.split("=", 1) for opt in request.parameter.split(",") if opt)
    messages = options.pop("messages", None)
    if not messages:
        raise SystemExit("grpclib_stubs: the option messages=<module> is required")
    file_name = options.pop("file", "_stubs.py")
    request.parameter = ",".join(f"{k}={v}" for k, v in options.items())

    modules: list[str] = []

    def compile_output(output_file: OutputTemplate) -> str:
        if output_file.services:
            modules.append(render_services(output_file, messages))
        return ""

    with mock.patch.object(parser, "outputfile_compiler", compile_output):
        parser.generate_code(request)
    if len(modules) != 1:
        raise SystemExit(f"grpclib_stubs: expected services in one package, found {len(modules)}")
    return CodeGeneratorResponse(
        supported_features=CodeGeneratorResponseFeature.PROTO3_OPTIONAL,
        file=[CodeGeneratorResponseFile(name=file_name, content=modules[0])],
    )


def main() -> None:
    request = CodeGeneratorRequest.parse(sys.stdin.buffer.read())
    sys.stdout.buffer.write(bytes(generate(request)))


if __name__ == "__main__":
    main()
