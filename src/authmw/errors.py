"""Every way authentication can fail, and the one place that turns a failure into an HTTP answer.

Failures are exceptions carrying an RFC 6750 error code and a fixed, safe description. `render_error`
turns one into status, headers and an RFC 9457 problem+json body; the shells only copy those out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "AuthError",
    "CSRFError",
    "ConfigurationError",
    "ErrorResponse",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "MissingCredentials",
    "PolicyNotApplied",
    "ServiceUnavailable",
    "StepUpRequired",
    "render_error",
]


class ConfigurationError(ValueError):
    """The configuration is unsafe or inconsistent; raised at start-up, never per request."""

    @classmethod
    def unless_finite(cls, settings: object, *names: str) -> None:
        """Refuse a NaN or infinite duration: NaN passes every `<=` check, and would turn a limit off."""
        for name in names:
            value = getattr(settings, name)
            if value is not None and not math.isfinite(value):
                raise cls(f"{type(settings).__name__}.{name} must be a finite number of seconds, not {value!r}")

    @classmethod
    def unless_count(cls, settings: object, name: str, low: int, high: int) -> None:
        """Refuse a size or count that is not a whole number from `low` to `high` (NaN, infinity and huge values
        would turn a bound off)."""
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise cls(f"{type(settings).__name__}.{name} must be a whole number from {low} to {high}, not {value!r}")


class AuthError(Exception):
    """Base of every per-request authentication failure.

    `description` is ours, never derived from request input (P28), so it is safe to send and log.
    """

    status: ClassVar[int] = 401
    code: ClassVar[str | None] = "invalid_token"
    title: ClassVar[str] = "Unauthorized"

    def __init__(self, description: str, *, reason: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        #: a short machine-readable reason code for logs and audit hooks, e.g. ``"expired"``
        self.reason = reason or (self.code or "unauthenticated")


class MissingCredentials(AuthError):
    """The route requires a credential and none of an accepted kind was presented (no error code, RFC 6750 §3.1)."""

    status = 401
    code = None
    title = "Authentication required"


class InvalidToken(AuthError):
    """A credential was presented and is not valid: bad signature, expired, wrong issuer, malformed, revoked."""

    status = 401
    code = "invalid_token"
    title = "Invalid credentials"


class StepUpRequired(AuthError):
    """The caller authenticated too long ago for this route (`max_auth_age`); log in again (RFC 9470)."""

    status = 401
    code = "insufficient_user_authentication"
    title = "Recent authentication required"

    def __init__(self, description: str, *, max_age: float, reason: str | None = None) -> None:
        super().__init__(description, reason=reason or "auth_too_old")
        self.max_age = int(max_age)


class InvalidRequest(AuthError):
    """The request itself is malformed: duplicate Authorization fields, two credential methods, bad syntax."""

    status = 400
    code = "invalid_request"
    title = "Bad request"


class InsufficientScope(AuthError):
    """Authenticated, but without every scope the route requires."""

    status = 403
    code = "insufficient_scope"
    title = "Insufficient scope"

    def __init__(self, description: str, *, required: Iterable[str], reason: str | None = None) -> None:
        super().__init__(description, reason=reason)
        self.required = tuple(sorted(required))


class CSRFError(AuthError):
    """A cookie-authenticated unsafe request failed the cross-site request checks."""

    status = 403
    code = "csrf_failed"
    title = "Cross-site request refused"


class ServiceUnavailable(AuthError):
    """A dependency (session store, key server) could not be reached; fail closed (P1, P27)."""

    status = 503
    code = "temporarily_unavailable"
    title = "Authentication temporarily unavailable"

    def __init__(self, description: str, *, retry_after: int = 5, reason: str | None = None) -> None:
        super().__init__(description, reason=reason or "store_unavailable")
        self.retry_after = retry_after


class PolicyNotApplied(AuthError):
    """The app routed a request to an endpoint that declares another policy than the one enforced (a route
    authmw could not look into): its answer is withheld, a server-side fault (500)."""

    status = 500
    code = "policy_not_applied"
    title = "Internal Server Error"


@dataclass(slots=True)
class ErrorResponse:
    """A framework-neutral HTTP answer: what the shells send when authentication fails."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


# RFC 6750 §3: error_description is limited to %x20-21 / %x23-5B / %x5D-7E (no quote, no backslash).
_NOT_DESCRIPTION_SAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_NOT_TOKEN_SAFE = re.compile(r"[^\x21\x23-\x5b\x5d-\x7e]")


def _quoted(value: str, *, token: bool = False) -> str:
    cleaned = (_NOT_TOKEN_SAFE if token else _NOT_DESCRIPTION_SAFE).sub("" if token else " ", value)
    return f'"{cleaned}"'


def challenge(scheme: str, realm: str, error: AuthError | None) -> str:
    """One `WWW-Authenticate` challenge; carries `error` only when a credential was presented (RFC 6750 §3)."""
    parts = [f"realm={_quoted(realm)}"]
    if error is not None and error.code is not None and not isinstance(error, ServiceUnavailable):
        parts.append(f"error={_quoted(error.code, token=True)}")
        parts.append(f"error_description={_quoted(error.description)}")
        if isinstance(error, InsufficientScope):
            parts.append(f"scope={_quoted(' '.join(error.required))}")
        if isinstance(error, StepUpRequired):
            parts.append(f"max_age={error.max_age}")
    return f"{scheme} " + ", ".join(parts)


def render_error(error: AuthError, *, realm: str, bearer: bool = True, session: bool = False) -> ErrorResponse:
    """The default answer for `error`: status, challenge headers and a problem+json body (RFC 9457).

    `bearer` / `session` say which credential kinds the route accepts (and the service has enabled):
    they decide which `WWW-Authenticate` challenges are sent.
    """
    body: dict[str, object] = {
        "type": f"urn:authmw:problem:{error.code or 'authentication_required'}",
        "title": error.title,
        "status": error.status,
        "detail": error.description,
    }
    if error.code is not None:
        body["error"] = error.code
    headers = [
        ("content-type", "application/problem+json"),
        ("cache-control", "no-store"),
        ("vary", "Cookie, Authorization"),
    ]
    if isinstance(error, InsufficientScope):
        body["required_scopes"] = list(error.required)
    if isinstance(error, ServiceUnavailable):
        headers.append(("retry-after", str(error.retry_after)))
    elif error.status in (400, 401, 403) and not isinstance(error, CSRFError):
        if bearer or not session:
            headers.append(("www-authenticate", challenge("Bearer", realm, error)))
        if session and error.status == 401 and (not bearer or isinstance(error, MissingCredentials)):
            # No registered scheme exists for cookie sessions; RFC 9110 §11.6.1 still wants a challenge on 401.
            step_up = error if isinstance(error, StepUpRequired) else None
            headers.append(("www-authenticate", challenge("Session", realm, step_up)))
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers.append(("content-length", str(len(payload))))
    return ErrorResponse(error.status, headers, payload)
