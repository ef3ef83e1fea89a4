"""What every store shares: the records, the failure, the user hash tag, and the two protocols.

Records are JSON (never pickle, P27). A stored session is ``"<absolute_expiry_ms>:<idle_ms>:<json>"`` so that a Redis
script can enforce the absolute timeout and slide the idle timeout without decoding JSON.

Every store operation is one method that returns a flow (see `authmw.io`), driven with `run_sync` or `run_async`;
an in-process store's flows never yield. Operations raise `StoreUnavailable` when the backing service cannot be
reached. A store may also answer the two reads of the request path without I/O: ``peek_load`` and
``peek_token_state`` take the arguments of `load` / `token_state` and return their answer, or `authmw.io.MISS` when
only I/O can tell. A store that can never answer so has none (or None); one that has them must give exactly what the
operation would. The public names here are re-exported, and listed, by `authmw.stores`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from authmw.errors import ServiceUnavailable
from authmw.io import Flow

log = logging.getLogger("authmw")


class StoreUnavailable(ServiceUnavailable):
    """The session store could not be reached in time: answered as 503 + Retry-After (fail closed)."""


def user_hash(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


def user_tag(user_id: str) -> str:
    """The hash tag shared by one user's keys: 16 bits, so it says almost nothing about who the user is."""
    return user_hash(user_id)[:4]


@dataclass(slots=True)
class SessionRecord:
    """A server-side session. Times are POSIX seconds; `sid` is the opaque id (``<tag>.<random>``)."""

    sid: str
    user_id: str
    scopes: tuple[str, ...] = ()
    created: float = 0.0
    auth_time: float = 0.0
    absolute_expiry: float = 0.0
    idle_timeout: float = 1800.0
    last_seen: float = 0.0
    user_agent: str = ""
    ip: str = ""
    remember: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def clone(self, last_seen: float | None = None) -> SessionRecord:
        """An independent copy (its own data bag), field by field: `dataclasses.replace` costs several times more
        on the per-request path."""
        r = self
        data = copy.deepcopy(r.data) if r.data else {}
        return SessionRecord(
            r.sid, r.user_id, r.scopes, r.created, r.auth_time, r.absolute_expiry, r.idle_timeout,
            r.last_seen if last_seen is None else last_seen, r.user_agent, r.ip, r.remember, data,
        )  # fmt: skip

    def encode(self) -> str:
        body = {
            "uid": self.user_id,
            "scopes": list(self.scopes),
            "created": self.created,
            "auth_time": self.auth_time,
            "ua": self.user_agent,
            "ip": self.ip,
            "remember": self.remember,
            "data": self.data,
        }
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=True)
        return f"{int(self.absolute_expiry * 1000)}:{int(self.idle_timeout * 1000)}:{payload}"

    @classmethod
    def decode(cls, sid: str, value: str | bytes, last_seen: float) -> SessionRecord | None:
        """A record from its stored form, or None when it is corrupt (a corrupt record is no session, P27)."""
        try:
            text = value.decode() if isinstance(value, bytes) else value
            absolute_ms, idle_ms, payload = text.split(":", 2)
            body = _RECORD_JSON.decode(payload)
            uid, scopes, data = body["uid"], body["scopes"], body.get("data", {})
            created, auth_time = body["created"], body["auth_time"]
            user_agent, ip, remember = body.get("ua", ""), body.get("ip", ""), body.get("remember", False)
            if (
                not isinstance(uid, str)
                or not uid
                or not isinstance(scopes, list)
                or not all(isinstance(s, str) for s in scopes)
                or not isinstance(data, dict)
                or not _finite_number(created)
                or not _finite_number(auth_time)
                or not isinstance(user_agent, str)
                or not isinstance(ip, str)
                or not isinstance(remember, bool)
            ):
                raise ValueError("malformed record")
            return cls(
                sid=sid,
                user_id=uid,
                scopes=tuple(scopes),
                created=float(created),
                auth_time=float(auth_time),
                absolute_expiry=int(absolute_ms) / 1000,
                idle_timeout=int(idle_ms) / 1000,
                last_seen=last_seen,
                user_agent=user_agent,
                ip=ip,
                remember=remember,
                data=data,
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            log.warning("authmw: a corrupt session record was ignored")
            return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in a session record")


#: built once: `json.loads` with an option builds a new decoder on every call
_RECORD_JSON = json.JSONDecoder(parse_constant=_no_constant)


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


@dataclass(slots=True)
class RefreshRecord:
    """A refresh token, stored under the hash of its value (never the value). Times are POSIX seconds."""

    token_hash: str
    user_id: str
    family: str
    scopes: tuple[str, ...]
    expires: float
    #: the session the token was issued from (its id): when that session ends, the family is dead
    session_sid: str | None = None
    auth_time: float = 0.0
    #: when the token was used (rotated); 0 while unused
    used_at: float = 0.0
    #: when the issuing began (0: unknown); a family is not created once the user's tokens were revoked after it
    created: float = 0.0


#: the outcomes of presenting a refresh token
RefreshOutcome = Literal["ok", "grace", "reuse", "revoked", "invalid"]


class SessionStore(Protocol):
    """What sessions need of a store. Each operation is a flow (drive it with `authmw.io.run_sync` / `run_async`)."""

    def load(self, sid: str, touch_interval: float) -> Flow[SessionRecord | None]:
        """The live record, sliding its idle expiry if the last slide is older than `touch_interval`."""
        ...

    def create(self, record: SessionRecord) -> Flow[None]:
        """Store a new record (its sid must be new) and add it to its user's index."""
        ...

    def rotate(self, old_sid: str, record: SessionRecord) -> Flow[bool]:
        """Atomically replace `old_sid` by `record` (a new sid); False when `old_sid` no longer exists."""
        ...

    def save(self, record: SessionRecord) -> Flow[bool]:
        """Write back a changed record only if it still exists (no resurrection); keeps its TTL."""
        ...

    def delete(self, sid: str, user_id: str) -> Flow[bool]:
        """End one session (a logout) and the refresh families issued from it: their access tokens with them."""
        ...

    def delete_user(self, user_id: str) -> Flow[int]:
        """Delete every session of the user; the count deleted."""
        ...

    def list_user(self, user_id: str) -> Flow[list[SessionRecord]]: ...

    def revoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> Flow[int]:
        """Log the user out everywhere at once: every session, every refresh family, and every access token
        issued before `not_before`. The count of sessions deleted."""
        ...

    def revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> Flow[None]:
        """Revoke the user's refresh families and every access token issued before `not_before`; sessions stay."""
        ...


class TokenStore(Protocol):
    """What token revocation and refresh tokens need of a store (the session store by default)."""

    def token_state(
        self, user_id: str, jti_key: str | None, grace: float = 0.0, family: str | None = None
    ) -> Flow[tuple[float | None, bool]]:
        """The user's not-before time (or None) and whether this token is revoked: its id on the denylist or, given
        the refresh `family` it was minted from, that family no longer alive. With `grace`, a store that cannot be
        reached may answer from revocation state fetched at most that long ago."""
        ...

    def revoke_jti(self, user_id: str, jti_key: str, expires_at: float) -> Flow[None]:
        """Deny a token id until it expires anyway."""
        ...

    def revoke_user(self, user_id: str, not_before: float, not_before_ttl: float) -> Flow[int]:
        """As `SessionStore.revoke_user`: sessions, refresh families and earlier access tokens."""
        ...

    def revoke_tokens(self, user_id: str, not_before: float, not_before_ttl: float) -> Flow[None]:
        """Revoke the user's refresh families and every access token issued before `not_before`; sessions stay."""
        ...

    def refresh_create(self, record: RefreshRecord, family_expires: float, new_family: bool) -> Flow[bool]:
        """Store a refresh token; False when its (existing) family was revoked meanwhile, when the session it
        is bound to (`record.session_sid`) no longer exists, or when the user's tokens were revoked after the
        issuing began (`record.created`)."""
        ...

    def refresh_use(
        self, tag: str, token_hash: str, now: float, grace: float, successor: tuple[str, float] | None = None
    ) -> Flow[tuple[RefreshOutcome, RefreshRecord | None]]:
        """Mark a refresh token used and, given ``successor=(hash, expires)``, store its successor in the same
        family, all atomically. A second use after `grace` seconds revokes the family. `tag` is the user tag
        of the token's internal (unmasked) form (its keys' hash slot); `token_hash` the SHA-256 of that form."""
        ...
