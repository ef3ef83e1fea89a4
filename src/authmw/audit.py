"""The audit trail: structured events for logins, logouts, rotations, revocations, refresh-token reuse,
authentication failures and store outages.

Events never carry a token, a cookie or a session id in clear (P28): a session appears as its public
handle (a hash of the id), a user as a keyed hash of the user id. `AuthConfig(audit=hook)` receives every
event; the default hook logs it to the ``authmw.audit`` logger, with the fields in ``extra["authmw"]``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["AuditEvent", "AuditHook", "Auditor", "log_event"]

EventKind = Literal[
    "login",
    "logout",
    "logout_everywhere",
    "rotate",
    "revoke_session",
    "revoke_token",
    "refresh",
    "refresh_reuse",
    "auth_failure",
    "store_unavailable",
]

audit_log = logging.getLogger("authmw.audit")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    kind: EventKind
    #: keyed hash of the user id (stable across processes sharing the secret keys), or None
    user: str | None = None
    #: the session's public handle (a hash of its id), or None
    session: str | None = None
    #: a machine-readable reason code (failures), e.g. ``"expired"``, ``"csrf_origin"``
    reason: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


AuditHook = Callable[[AuditEvent], None]


def log_event(event: AuditEvent) -> None:
    """The default hook: one log line per event on ``authmw.audit`` (INFO; failures and outages WARNING)."""
    level = logging.WARNING if event.kind in ("store_unavailable", "refresh_reuse") else logging.INFO
    # Values are escaped: a request path may hold a newline (decoded %0A), which must not forge a second line.
    fields = " ".join(f"{k}={_escaped(v)}" for k, v in event.to_dict().items() if k not in ("kind", "time"))
    audit_log.log(level, "authmw %s %s", event.kind, fields, extra={"authmw": event.to_dict()})


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _escaped(value: Any) -> str:
    """`value` for a log line: control characters (and the backslash) written as escapes."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), str(value))


class Auditor:
    """Builds events (hashing identifiers with a key of its own) and hands them to the hook."""

    def __init__(self, hook: AuditHook | None, salt: bytes) -> None:
        self.hook = hook or log_event
        self._salt = hashlib.sha256(b"authmw.audit:" + salt).digest()

    def user(self, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        digest = hmac.new(self._salt, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:16]

    def emit(self, kind: EventKind, *, user_id: str | None = None, **fields: Any) -> None:
        try:
            self.hook(AuditEvent(kind, user=self.user(user_id), **fields))
        except Exception:  # an audit hook must never turn a request into a 500
            logging.getLogger("authmw").exception("authmw: the audit hook failed")
