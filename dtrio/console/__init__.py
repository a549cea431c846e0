"""The operators' commands, `python -m dtrio instances …` and `python -m dtrio entities …`: they
open the store as the engine does and act through the same client, so an engine or sidecar
running on the store picks their writes up."""

from __future__ import annotations

from typing import Any

from . import dashboard, entities, instances
from .common import store_options


def add_commands(commands: Any) -> None:
    common = store_options()
    instances.add_commands(commands, common)
    entities.add_commands(commands, common)
    dashboard.add_commands(commands)
