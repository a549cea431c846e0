"""Who may see the dashboard and act through it: where it may listen, the access token, and
the CSRF token every action form carries."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput

DEFAULT_HOST = "127.0.0.1"
SESSION = "dtrio_session"  # the cookie of a browser's session, which its CSRF tokens are for
TOKEN = "dtrio_token"  # the cookie holding the access token once logged in


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` ("8233", "0.0.0.0:8233", "[::1]:8233"); the host defaults to loopback."""
    match = re.fullmatch(r"(?:(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):)?(\d{1,5})", text.strip())
    if match is None or int(match[2]) > 65535:
        raise InvalidInput(
            f"dashboard address {text!r} is not [HOST:]PORT (e.g. 8233 or 127.0.0.1:8233)")
    host = (match[1] or DEFAULT_HOST).strip("[]")
    return host, int(match[2])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def check_exposure(host: str, *, guarded: bool, read_only: bool) -> None:
    """Refuse to listen beyond this machine with neither a token nor read-only mode."""
    if not is_loopback(host) and not guarded and not read_only:
        raise InvalidInput(
            f"the dashboard would listen on {host}, beyond this machine, with nothing "
            "guarding its actions: give --dashboard-token-file (a token to log in with) "
            "or --dashboard-read-only, or listen on 127.0.0.1")


def read_token(path: str | os.PathLike[str]) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read the dashboard token file {str(path)!r}: "
                           f"{exc.strerror}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise InvalidInput(f"the dashboard token in {str(path)!r} must be at least 16 "
                           "characters without spaces (e.g. from `openssl rand -hex 32`)")
    return token


@dataclass(frozen=True, slots=True)
class Access:
    """The dashboard's access rules: a token to require (None: none), and whether actions
    are refused."""

    token: str | None = None
    read_only: bool = False
    # Signs CSRF tokens; new each start, so forms from before a restart are refused.
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def admits(self, presented: str | None) -> bool:
        if self.token is None:
            return True
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.token.encode())

    def csrf_for(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str | None, presented: str | None) -> bool:
        return bool(session and presented) and hmac.compare_digest(
            self.csrf_for(session or ""), presented or "")
