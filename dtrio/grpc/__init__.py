"""The Durable Task gRPC sidecar (`python -m dtrio serve`): official SDK workers and clients
talk to a dtrio engine through it."""

from .sidecar import serve_sidecar

__all__ = ["serve_sidecar"]
