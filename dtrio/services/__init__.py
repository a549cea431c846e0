"""The Trio services: poller, dispatchers and the engine root."""

from .engine import Engine, open_engine, serve_engine
from .options import EngineOptions

__all__ = ["Engine", "EngineOptions", "open_engine", "serve_engine"]
