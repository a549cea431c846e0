"""proto/orchestrator_service.proto must describe the same wire protocol as the durabletask SDK.

We compile our hand-maintained .proto with grpc_tools.protoc into a FileDescriptorSet and compare
it with the descriptor the SDK (durabletask 1.12.0) ships in orchestrator_service_pb2: every
message (nested ones and map entries included), every field (name, number, type, type_name,
label, oneof, proto3_optional, deprecated), every enum value and every service method.
"""

import copy
import os
from pathlib import Path

import grpc_tools
import pytest
from durabletask.internal import orchestrator_service_pb2 as sdk_pb2
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
PROTO_FILE = PROTO_DIR / "orchestrator_service.proto"
WELL_KNOWN_INCLUDE = Path(os.path.dirname(grpc_tools.__file__)) / "_proto"


def _sdk_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    sdk_pb2.DESCRIPTOR.CopyToProto(fdp)
    return fdp


SDK_FILE = _sdk_file()


@pytest.fixture(scope="module")
def ours_file(tmp_path_factory) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path_factory.mktemp("descriptor") / "orchestrator_service.pb"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{WELL_KNOWN_INCLUDE}",
            f"--descriptor_set_out={out}",
            str(PROTO_FILE),
        ]
    )
    assert rc == 0, f"protoc failed on {PROTO_FILE} (exit {rc})"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    # Without --include_imports the set holds exactly our file.
    assert [f.name for f in fds.file] == ["orchestrator_service.proto"]
    return fds.file[0]


# ---------------------------------------------------------------- flattening and comparison


def flatten_messages(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message, nested ones (map entries included) too, by dotted name: 'A.BEntry'."""
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(msg, prefix):
        name = f"{prefix}{msg.name}"
        found[name] = msg
        for nested in msg.nested_type:
            walk(nested, f"{name}.")

    for msg in fdp.message_type:
        walk(msg, "")
    return found


def flatten_enums(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found = {e.name: e for e in fdp.enum_type}

    def walk(msg, prefix):
        name = f"{prefix}{msg.name}"
        for enum in msg.enum_type:
            found[f"{name}.{enum.name}"] = enum
        for nested in msg.nested_type:
            walk(nested, f"{name}.")

    for msg in fdp.message_type:
        walk(msg, "")
    return found


def flatten_methods(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> dict[str, descriptor_pb2.MethodDescriptorProto]:
    return {f"{svc.name}/{m.name}": m for svc in fdp.service for m in svc.method}


LABELS = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Label.items()}
TYPES = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}


def field_facts(
    msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> dict:
    """Everything about a field that matters on the wire (or for generated code)."""
    return {
        "number": field.number,
        "type": TYPES[field.type],
        "type_name": field.type_name,
        "label": LABELS[field.label],
        "oneof": msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None,
        "proto3_optional": field.proto3_optional,
        "deprecated": field.options.deprecated,
        "default_value": field.default_value,
        "extendee": field.extendee,
    }


def diff_messages(
    name: str, ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto
) -> list[str]:
    """Human-readable differences between two messages; empty when they match."""
    problems = []
    our_fields = {f.name: f for f in ours.field}
    their_fields = {f.name: f for f in theirs.field}
    for missing in sorted(their_fields.keys() - our_fields.keys()):
        problems.append(
            f"{name}.{missing}: field only in the SDK (#{their_fields[missing].number})"
        )
    for extra in sorted(our_fields.keys() - their_fields.keys()):
        problems.append(f"{name}.{extra}: field only in ours (#{our_fields[extra].number})")
    for fname in sorted(our_fields.keys() & their_fields.keys()):
        a = field_facts(ours, our_fields[fname])
        b = field_facts(theirs, their_fields[fname])
        for key in a:
            if a[key] != b[key]:
                problems.append(f"{name}.{fname}: {key} ours={a[key]!r} sdk={b[key]!r}")
    # Field numbers must be unique and agree even if names were swapped.
    our_numbers = {f.number: f.name for f in ours.field}
    their_numbers = {f.number: f.name for f in theirs.field}
    for number in sorted(our_numbers.keys() & their_numbers.keys()):
        if our_numbers[number] != their_numbers[number]:
            problems.append(
                f"{name}: field #{number} is {our_numbers[number]!r} in ours,"
                f" {their_numbers[number]!r} in the SDK"
            )
    our_oneofs = [o.name for o in ours.oneof_decl]
    their_oneofs = [o.name for o in theirs.oneof_decl]
    if our_oneofs != their_oneofs:
        problems.append(f"{name}: oneofs ours={our_oneofs} sdk={their_oneofs}")
    for opt in ("map_entry", "deprecated"):
        if getattr(ours.options, opt) != getattr(theirs.options, opt):
            problems.append(
                f"{name}: option {opt}"
                f" ours={getattr(ours.options, opt)} sdk={getattr(theirs.options, opt)}"
            )
    our_nested = sorted(n.name for n in ours.nested_type)
    their_nested = sorted(n.name for n in theirs.nested_type)
    if our_nested != their_nested:
        problems.append(f"{name}: nested messages ours={our_nested} sdk={their_nested}")
    # Reserved numbers/names are not on the wire, but they stop a number from being reused.
    our_ranges = sorted((r.start, r.end - 1) for r in ours.reserved_range)  # end is exclusive
    their_ranges = sorted((r.start, r.end - 1) for r in theirs.reserved_range)
    if our_ranges != their_ranges:
        problems.append(
            f"{name}: reserved numbers (first, last) ours={our_ranges} sdk={their_ranges}"
        )
    if sorted(ours.reserved_name) != sorted(theirs.reserved_name):
        problems.append(
            f"{name}: reserved names"
            f" ours={sorted(ours.reserved_name)} sdk={sorted(theirs.reserved_name)}"
        )
    return problems


def diff_enums(
    name: str, ours: descriptor_pb2.EnumDescriptorProto, theirs: descriptor_pb2.EnumDescriptorProto
) -> list[str]:
    problems = []
    our_values = {v.name: v for v in ours.value}
    their_values = {v.name: v for v in theirs.value}
    for missing in sorted(their_values.keys() - our_values.keys()):
        problems.append(
            f"{name}.{missing}: value only in the SDK (= {their_values[missing].number})"
        )
    for extra in sorted(our_values.keys() - their_values.keys()):
        problems.append(f"{name}.{extra}: value only in ours (= {our_values[extra].number})")
    for vname in sorted(our_values.keys() & their_values.keys()):
        a, b = our_values[vname], their_values[vname]
        if a.number != b.number:
            problems.append(f"{name}.{vname}: number ours={a.number} sdk={b.number}")
        if a.options.deprecated != b.options.deprecated:
            problems.append(
                f"{name}.{vname}: deprecated ours={a.options.deprecated} sdk={b.options.deprecated}"
            )
    if ours.options.allow_alias != theirs.options.allow_alias:
        problems.append(f"{name}: allow_alias differs")
    return problems


def diff_methods(
    name: str,
    ours: descriptor_pb2.MethodDescriptorProto,
    theirs: descriptor_pb2.MethodDescriptorProto,
) -> list[str]:
    problems = []
    for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
        a, b = getattr(ours, attr), getattr(theirs, attr)
        if a != b:
            problems.append(f"{name}: {attr} ours={a!r} sdk={b!r}")
    if ours.options.deprecated != theirs.options.deprecated:
        problems.append(
            f"{name}: deprecated ours={ours.options.deprecated} sdk={theirs.options.deprecated}"
        )
    return problems


def diff_files(
    ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    """Every difference between two files: the self-check below uses this on mutated copies."""
    problems = []
    for label, flatten, diff in (
        ("message", flatten_messages, diff_messages),
        ("enum", flatten_enums, diff_enums),
        ("method", flatten_methods, diff_methods),
    ):
        a, b = flatten(ours), flatten(theirs)
        problems += [f"{label} {n}: only in the SDK" for n in sorted(b.keys() - a.keys())]
        problems += [f"{label} {n}: only in ours" for n in sorted(a.keys() - b.keys())]
        for n in sorted(a.keys() & b.keys()):
            problems += diff(n, a[n], b[n])
    if ours.package != theirs.package:
        problems.append(f"package ours={ours.package!r} sdk={theirs.package!r}")
    return problems


# ---------------------------------------------------------------- the file as a whole


def test_package_is_empty_so_method_paths_are_bare(ours_file):
    assert SDK_FILE.package == ""
    assert ours_file.package == ""
    assert [s.name for s in ours_file.service] == ["TaskHubSidecarService"]
    # The path gRPC puts on the wire: /<package.>Service/Method.
    svc = sdk_pb2.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
    assert svc.full_name == "TaskHubSidecarService"
    for m in ours_file.service[0].method:
        assert f"/{svc.full_name}/{m.name}" == f"/TaskHubSidecarService/{m.name}"


def test_syntax_and_imports_match(ours_file):
    assert ours_file.syntax == SDK_FILE.syntax == "proto3"
    assert sorted(ours_file.dependency) == sorted(SDK_FILE.dependency)


def test_file_options_match(ours_file):
    # Not wire facts, but they tell other generators where the SDK's code lives.
    for opt in ("java_package", "go_package", "csharp_namespace"):
        assert getattr(ours_file.options, opt) == getattr(SDK_FILE.options, opt), opt


def test_same_messages_on_both_sides(ours_file):
    ours, theirs = set(flatten_messages(ours_file)), set(flatten_messages(SDK_FILE))
    assert sorted(theirs - ours) == [], "messages only in the SDK"
    assert sorted(ours - theirs) == [], "messages only in ours"


def test_same_enums_on_both_sides(ours_file):
    ours, theirs = set(flatten_enums(ours_file)), set(flatten_enums(SDK_FILE))
    assert sorted(theirs - ours) == [], "enums only in the SDK"
    assert sorted(ours - theirs) == [], "enums only in ours"


def test_same_services_and_methods_on_both_sides(ours_file):
    assert [s.name for s in ours_file.service] == [s.name for s in SDK_FILE.service]
    ours, theirs = set(flatten_methods(ours_file)), set(flatten_methods(SDK_FILE))
    assert sorted(theirs - ours) == [], "methods only in the SDK"
    assert sorted(ours - theirs) == [], "methods only in ours"


def test_whole_file_has_no_differences(ours_file):
    # Belt and braces over the parametrized tests: one list of everything that differs.
    problems = diff_files(ours_file, SDK_FILE)
    assert problems == []


# ---------------------------------------------------------------- one test per message/enum/method


SDK_MESSAGES = flatten_messages(SDK_FILE)
SDK_ENUMS = flatten_enums(SDK_FILE)
SDK_METHODS = flatten_methods(SDK_FILE)


@pytest.mark.parametrize("name", sorted(SDK_MESSAGES))
def test_message_matches_sdk(ours_file, name):
    ours = flatten_messages(ours_file)
    assert name in ours, f"message {name} is missing from {PROTO_FILE.name}"
    assert diff_messages(name, ours[name], SDK_MESSAGES[name]) == []


@pytest.mark.parametrize("name", sorted(SDK_ENUMS))
def test_enum_matches_sdk(ours_file, name):
    ours = flatten_enums(ours_file)
    assert name in ours, f"enum {name} is missing from {PROTO_FILE.name}"
    assert diff_enums(name, ours[name], SDK_ENUMS[name]) == []


@pytest.mark.parametrize("name", sorted(SDK_METHODS))
def test_method_matches_sdk(ours_file, name):
    ours = flatten_methods(ours_file)
    assert name in ours, f"rpc {name} is missing from {PROTO_FILE.name}"
    assert diff_methods(name, ours[name], SDK_METHODS[name]) == []


# ---------------------------------------------------------------- the comparison can fail


def _message(fdp, dotted):
    return flatten_messages(fdp)[dotted]


def _field(fdp, dotted_msg, field_name):
    return next(f for f in _message(fdp, dotted_msg).field if f.name == field_name)


MUTATIONS = {
    "field number": (
        lambda f: setattr(_field(f, "HistoryEvent", "eventId"), "number", 99),
        "HistoryEvent.eventId: number ours=99 sdk=1",
    ),
    "field type": (
        lambda f: setattr(
            _field(f, "TaskScheduledEvent", "name"),
            "type",
            descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        ),
        "TaskScheduledEvent.name: type ours='TYPE_BYTES' sdk='TYPE_STRING'",
    ),
    "field type_name": (
        lambda f: setattr(
            _field(f, "TaskScheduledEvent", "input"), "type_name", ".google.protobuf.BytesValue"
        ),
        "TaskScheduledEvent.input: type_name"
        " ours='.google.protobuf.BytesValue' sdk='.google.protobuf.StringValue'",
    ),
    "field label": (
        lambda f: setattr(
            _field(f, "OrchestratorRequest", "newEvents"),
            "label",
            descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        ),
        "OrchestratorRequest.newEvents: label ours='LABEL_OPTIONAL' sdk='LABEL_REPEATED'",
    ),
    "field leaves oneof": (
        lambda f: _field(f, "HistoryEvent", "timerFired").ClearField("oneof_index"),
        "HistoryEvent.timerFired: oneof ours=None sdk='eventType'",
    ),
    "proto3 optional": (
        lambda f: setattr(_field(f, "WorkItem", "completionToken"), "proto3_optional", True),
        "WorkItem.completionToken: proto3_optional ours=True sdk=False",
    ),
    "deprecated dropped": (
        lambda f: _field(f, "TraceContext", "spanID").options.ClearField("deprecated"),
        "TraceContext.spanID: deprecated ours=False sdk=True",
    ),
    "field removed": (
        lambda f: _message(f, "ExecutionStartedEvent").field.pop(),
        "ExecutionStartedEvent.tags: field only in the SDK (#9)",
    ),
    "map entry value": (
        lambda f: setattr(
            _field(f, "TaskFailureDetails.PropertiesEntry", "value"),
            "type_name",
            ".google.protobuf.Struct",
        ),
        "TaskFailureDetails.PropertiesEntry.value: type_name"
        " ours='.google.protobuf.Struct' sdk='.google.protobuf.Value'",
    ),
    "enum value": (
        lambda f: setattr(f.enum_type[0].value[1], "number", 42),
        "OrchestrationStatus.ORCHESTRATION_STATUS_COMPLETED: number ours=42 sdk=1",
    ),
    "enum value removed": (
        lambda f: f.enum_type[1].value.pop(),
        "WorkerCapability.WORKER_CAPABILITY_LARGE_PAYLOADS: value only in the SDK (= 3)",
    ),
    "message removed": (
        lambda f: f.message_type.remove(_message(f, "HealthPing")),
        "message HealthPing: only in the SDK",
    ),
    "method streaming": (
        lambda f: setattr(
            flatten_methods(f)["TaskHubSidecarService/GetWorkItems"], "server_streaming", False
        ),
        "TaskHubSidecarService/GetWorkItems: server_streaming ours=False sdk=True",
    ),
    "method input": (
        lambda f: setattr(
            flatten_methods(f)["TaskHubSidecarService/Hello"], "input_type", ".HealthPing"
        ),
        "TaskHubSidecarService/Hello: input_type ours='.HealthPing' sdk='.google.protobuf.Empty'",
    ),
    "reserved number dropped": (
        lambda f: _message(f, "OrchestrationIdReusePolicy").ClearField("reserved_range"),
        "OrchestrationIdReusePolicy: reserved numbers (first, last) ours=[] sdk=[(2, 2)]",
    ),
    "package": (
        lambda f: setattr(f, "package", "durabletask"),
        "package ours='durabletask' sdk=''",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_comparison_reports_a_mutated_descriptor(mutation):
    mutate, expected = MUTATIONS[mutation]
    assert diff_files(SDK_FILE, SDK_FILE) == []
    mutated = copy.deepcopy(SDK_FILE)
    mutate(mutated)
    problems = diff_files(mutated, SDK_FILE)
    assert expected in problems, problems
