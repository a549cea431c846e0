"""Who may use the sidecar: TLS (mutual, with a client CA), and a bearer token that every RPC
but Hello must carry. The token is read from a file and never logged."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import grpclib.const
import trio
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError

from ..errors import InvalidInput

log = logging.getLogger("dtrio.grpc")

# Hello reveals nothing: the SDKs call it to learn whether the sidecar is up.
OPEN_METHODS = frozenset({"/TaskHubSidecarService/Hello"})


def read_token(path: str | PathLike[str]) -> str:
    """The token in `path`, without the whitespace around it (`echo TOKEN > F` adds a newline)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read the auth token file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"the auth token file {str(path)!r} is not UTF-8 text") from None
    if not token:
        raise InvalidInput(f"the auth token file {str(path)!r} is empty")
    # The token travels in a gRPC text header: printable ASCII only.
    if not (token.isascii() and token.isprintable()):
        raise InvalidInput(f"the auth token in {str(path)!r} holds characters a header cannot "
                           "carry (a token is one line of printable ASCII)")
    return token


def server_ssl_context(
    cert: str | PathLike[str], key: str | PathLike[str],
    client_ca: str | PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server context presenting `cert` (PEM, with its chain) and `key`; with `client_ca`,
    clients must present a certificate that CA signed (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # gRPC clients refuse a TLS connection that did not agree on HTTP/2.
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise InvalidInput(f"cannot read the TLS file {exc.filename!r}: {exc.strerror}") from None
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(
            f"cannot use the TLS certificate {str(cert)!r} with the key {str(key)!r}: "
            "they must be a PEM certificate and its own unencrypted PEM private key "
            f"({_reason(exc)})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except FileNotFoundError as exc:
            raise InvalidInput(
                f"cannot read the TLS client CA file {exc.filename!r}: {exc.strerror}") from None
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"cannot use the TLS client CA file {str(client_ca)!r}: "
                               f"PEM certificates expected ({_reason(exc)})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    """OpenSSL's reason, without the place in CPython's source that raised it."""
    text = getattr(exc, "reason", None) or exc.strerror or str(exc)
    return "OpenSSL: " + re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)


@dataclass(frozen=True)
class Door:
    """What `serve_sidecar` was told about TLS and the token, loaded and checked."""

    ssl: ssl.SSLContext | None = None
    token: str | None = None


# Plaintext, no token: for a sidecar only this machine reaches.
OPEN = Door()


def open_door(
    tls_cert: str | PathLike[str] | None = None,
    tls_key: str | PathLike[str] | None = None,
    tls_client_ca: str | PathLike[str] | None = None,
    auth_token_file: str | PathLike[str] | None = None,
) -> Door:
    """Load the TLS files and the token; a clear error names what is missing or wrong."""
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if tls_client_ca is not None and tls_cert is None:
        raise InvalidInput("a TLS client CA (--tls-client-ca) needs TLS: give --tls-cert and "
                           "--tls-key as well")
    context = None if tls_cert is None or tls_key is None else server_ssl_context(
        tls_cert, tls_key, tls_client_ca)
    token = None if auth_token_file is None else read_token(auth_token_file)
    return Door(context, token)


class TokenCheck:
    """grpclib's RecvRequest listener: refuses, with UNAUTHENTICATED, a call to any method but
    those in OPEN_METHODS that lacks `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def __call__(self, event: RecvRequest) -> None:
        if event.method_name in OPEN_METHODS:
            return
        given = event.metadata.get("authorization")
        scheme, _, credential = given.partition(" ") if isinstance(given, str) else ("", "", "")
        # compare_digest takes as long whatever the first difference: nothing to time.
        if scheme.lower() == "bearer" and hmac.compare_digest(
                credential.strip().encode(), self._expected):
            return
        what = "a wrong token" if given else "no token"
        peer = event.peer.addr()
        log.info("refused a call to %s from %s: %s", event.method_name,
                 f"{peer[0]}:{peer[1]}" if peer else "an unknown peer", what)
        raise GRPCError(grpclib.const.Status.UNAUTHENTICATED,
                        f"{event.method_name} needs the header 'authorization: Bearer <token>' "
                        f"with this sidecar's token; the call had {what}")


async def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (so only this machine reaches it)."""
    try:
        infos = await trio.socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
