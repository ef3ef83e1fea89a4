"""Server-side sessions: opaque ids in a signed cookie, records in a store, and the session lifecycle.

The cookie carries only a random id signed with itsdangerous (P16, P17): a valid signature merely allows a
store lookup; the server-side record decides, with idle and absolute timeouts (P19). Login always issues a
new id (P18), logout deletes the record and clears the cookie (P20). Cross-site checks guard unsafe
cookie-authenticated requests (P23).

Everything here is sans-IO: lifecycle operations are flows (see `authmw.io`), so one implementation
serves `SessionHandle` (WSGI, plain methods) and `AsyncSessionHandle` (ASGI, awaitable methods).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from itsdangerous import BadData, BadSignature, Signer, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode

from authmw.audit import Auditor
from authmw.errors import ConfigurationError, CSRFError
from authmw.io import MISS, Flow, Pending, run_async, run_sync, settled
from authmw.issuer import restamp_not_before
from authmw.masking import TagMask
from authmw.principal import CONTROL_CHARACTERS, Principal
from authmw.request import RequestView
from authmw.stores import MemoryStore, SessionRecord, SessionStore, user_tag

__all__ = [
    "AsyncSessionHandle",
    "BaseSessionHandle",
    "SessionHandle",
    "SessionInfo",
    "SessionManager",
    "SessionSettings",
    "SessionState",
]

log = logging.getLogger("authmw")

_SID = re.compile(r"[0-9a-f]{4}\.[A-Za-z0-9_-]{43}")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9._-]+")
#: how far in the future a session cookie's signature time may be (another host's clock a little ahead), in seconds
COOKIE_CLOCK_SKEW = 60
#: methods that change nothing: no cross-site checks for them (websocket handshakes aside)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_MIN_KEY_BYTES = 32


@dataclass(slots=True)
class SessionSettings:
    """Server-side sessions. Only `secret_keys` is required; the store defaults to an in-memory one."""

    #: cookie-signing keys: the first signs, all verify (rotate by prepending a new key)
    secret_keys: Sequence[str | bytes]
    store: SessionStore = field(default_factory=MemoryStore)
    idle_timeout: float = 1800.0
    absolute_timeout: float = 8 * 3600.0
    #: how often a sliding idle expiry is written back; at most a quarter of the idle timeout
    touch_interval: float | None = None
    remember_idle_timeout: float = 7 * 24 * 3600.0
    remember_absolute_timeout: float = 30 * 24 * 3600.0
    cookie_secure: bool = True
    #: default ``__Host-authmw`` when secure, ``authmw_session`` otherwise
    cookie_name: str | None = None
    cookie_samesite: Literal["Lax", "Strict"] = "Lax"
    max_cookie_bytes: int = 4096
    #: origins (``https://app.example``) besides the request's own that may send unsafe cookie requests
    trusted_origins: Sequence[str] = ()
    #: require a signed double-submit token (`X-CSRF-Token` header) on unsafe cookie requests
    csrf_require_token: bool = False
    csrf_header: str = "x-csrf-token"
    #: send browsers that need to log in (or log in again) here with a 303, instead of a 401
    login_url: str | None = None
    #: largest data bag saved with a session, in bytes of JSON
    max_data_bytes: int = 4096
    #: the app's own public origins (``https://app.example``). When set, the Origin (or Referer) of an unsafe cookie
    #: request must be one of these or of `trusted_origins`, and the Host header (forwarded or not) is not consulted
    origins: Sequence[str] = ()
    #: refuse unsafe cookie requests that carry no Origin, Referer or Sec-Fetch-Site at all. Off by default: only
    #: non-browser clients send such requests, and no page can make a browser send one (see `cross_site_reason`)
    require_origin: bool = False

    def __post_init__(self) -> None:
        ConfigurationError.unless_finite(
            self,
            "idle_timeout",
            "absolute_timeout",
            "touch_interval",
            "remember_idle_timeout",
            "remember_absolute_timeout",
        )
        ConfigurationError.unless_count(self, "max_cookie_bytes", 1, 4096)  # P13: browsers keep at most 4096
        ConfigurationError.unless_count(self, "max_data_bytes", 1, 1 << 20)
        keys = [k.encode() if isinstance(k, str) else bytes(k) for k in self.secret_keys]
        if not keys:
            raise ConfigurationError("SessionSettings.secret_keys needs at least one key")
        if any(len(k) < _MIN_KEY_BYTES for k in keys):
            raise ConfigurationError(
                f"session secret keys must be at least {_MIN_KEY_BYTES} random bytes (P32); "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        self.secret_keys = keys
        if self.idle_timeout <= 0 or self.absolute_timeout <= 0:
            raise ConfigurationError("session timeouts must be positive")
        limit = self.idle_timeout / 4
        if self.touch_interval is None:
            self.touch_interval = min(60.0, limit)
        elif not 0 <= self.touch_interval <= limit:
            raise ConfigurationError("touch_interval must be between 0 and a quarter of idle_timeout")
        if self.cookie_name is None:
            self.cookie_name = "__Host-authmw" if self.cookie_secure else "authmw_session"
        if self.cookie_name.startswith("__Host-") and not self.cookie_secure:
            raise ConfigurationError("a __Host- cookie must be Secure")
        if self.cookie_samesite not in ("Lax", "Strict"):
            raise ConfigurationError("cookie_samesite must be 'Lax' or 'Strict'")
        self.origins = _configured_origins(self.origins, "origins", "AUTHMW_ORIGINS")
        self.trusted_origins = _configured_origins(self.trusted_origins, "trusted_origins", "AUTHMW_TRUSTED_ORIGINS")
        self.csrf_header = self.csrf_header.lower()


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session as shown on a "your devices" page: `handle` identifies it without revealing the id."""

    handle: str
    user_id: str
    created: float
    last_seen: float
    expires: float
    user_agent: str
    ip: str
    current: bool

    @classmethod
    def of(cls, record: SessionRecord, current: bool = False) -> SessionInfo:
        return cls(
            handle=session_handle(record.sid),
            user_id=record.user_id,
            created=record.created,
            last_seen=record.last_seen,
            expires=record.absolute_expiry,
            user_agent=record.user_agent,
            ip=record.ip,
            current=current,
        )


@functools.lru_cache(maxsize=4096)
def session_handle(sid: str) -> str:
    """A public, non-secret name for a session (the id itself is a bearer secret and never shown)."""
    return hashlib.sha256(b"authmw.handle:" + sid.encode()).hexdigest()[:16]


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            return None
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        port = parts.port
    except ValueError:
        return None
    default = 443 if scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def _configured_origins(values: Sequence[str], name: str, variable: str) -> tuple[str, ...]:
    """Origins from configuration, normalized as `_origin_of` does a request's; anything but ``scheme://host[:port]``
    is refused at start-up (a typo would otherwise refuse every browser request, or trust nothing it meant to)."""
    if isinstance(values, str):
        values = [part.strip() for part in values.split(",") if part.strip()]
    found = []
    for value in values:
        normalized = None
        if isinstance(value, str):
            try:
                parts = urlsplit(value.strip())
                well_formed = (
                    parts.scheme in ("http", "https")
                    and parts.username is None
                    and parts.path in ("", "/")
                    and not (parts.query or parts.fragment or value.strip().endswith(("?", "#")))
                )
            except ValueError:
                well_formed = False
            normalized = _origin_of(value.strip()) if well_formed else None
        if normalized is None:
            raise ConfigurationError(
                f"SessionSettings.{name} ({variable}) takes origins such as 'https://app.example' or "
                f"'http://localhost:8000' (scheme://host[:port], no path), not {value!r}"
            )
        found.append(normalized)
    return tuple(found)


class SessionState:
    """Per-request session state: what was loaded, what the response must do to the cookie."""

    __slots__ = (
        "_cookie_read",
        "_sid",
        "bad_cookie",
        "clear_cookie",
        "data_snapshot",
        "manager",
        "record",
        "set_cookie",
        "view",
    )

    def __init__(self, manager: SessionManager, view: RequestView) -> None:
        self.manager = manager
        self.view = view
        self.record: SessionRecord | None = None
        self.bad_cookie = False
        self.set_cookie: str | None = None
        self.clear_cookie = False
        self._cookie_read = False
        self._sid: str | None = None
        #: the data bag as JSON when the app first read it (None: it never did, so it cannot have changed it)
        self.data_snapshot: str | None = None

    def cookie_sid(self) -> str | None:
        """The session id from a correctly signed cookie, or None (`bad_cookie` says if one was rejected)."""
        if not self._cookie_read:
            self._cookie_read = True
            self._sid = self.manager.read_cookie(self)
        return self._sid

    def response_cookies(self) -> list[str]:
        """`Set-Cookie` values this response must carry."""
        if self.set_cookie is not None:
            return [self.set_cookie]
        if self.clear_cookie or self.bad_cookie:
            return [self.manager.clearing_cookie()]
        return []

    def data_changed(self) -> bool:
        if self.data_snapshot is None or self.record is None:
            return False
        return _dump(self.record.data) != self.data_snapshot

    def watch_data(self) -> dict[str, Any]:
        if self.record is None:
            raise LookupError("no session: log in first")
        if self.data_snapshot is None:
            self.data_snapshot = _dump(self.record.data)
        return self.record.data


def _dump(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


class SessionManager:
    """The session lifecycle, framework-free. One per middleware; thread- and asyncio-safe."""

    def __init__(self, settings: SessionSettings, auditor: Auditor | None = None) -> None:
        self.settings = settings
        self.store = settings.store
        keys = [k.encode() if isinstance(k, str) else bytes(k) for k in settings.secret_keys]
        # One signer per key (P17: salt, SHA-256), the signing key first: the key that verifies a cookie also
        # names the mask to take off its id, and a cookie signed with the current key costs one HMAC.
        self._signers = [
            (TimestampSigner(key, salt="authmw.session", digest_method=hashlib.sha256), TagMask(key)) for key in keys
        ]
        self._signer, self.tag_mask = self._signers[0]
        self._csrf_signer = Signer(list(reversed(keys)), salt="authmw.csrf", digest_method=hashlib.sha256)
        self.auditor = auditor or Auditor(None, keys[0])
        self.cookie_name: str = settings.cookie_name or "authmw_session"
        self._cookie_prefix = self.cookie_name + "="
        self._max_cookie = settings.max_cookie_bytes
        self._max_age = max(settings.absolute_timeout, settings.remember_absolute_timeout)
        assert settings.touch_interval is not None
        self.touch_interval: float = settings.touch_interval
        attributes = ["Path=/", "HttpOnly", f"SameSite={settings.cookie_samesite}"]
        if settings.cookie_secure:
            attributes.append("Secure")
        self._attributes = "; ".join(attributes)
        self._verified: dict[str, tuple[str, float]] = {}  # cookie value -> (session id, signed at)
        self._headers: dict[str, tuple[str, float]] = {}  # a whole Cookie header -> the same, for that value
        # session id -> (the record's scopes, its principal): a Principal is immutable, and building one is
        # a good part of a session request's cost. Reused only while the record still says the same.
        self._principals: dict[str, tuple[tuple[str, ...], Principal]] = {}
        #: where access-token revocations live (set by the Authenticator when JWTs are configured)
        self.token_store: Any = None
        self.not_before_ttl = 2 * 24 * 3600.0

    @property
    def store(self) -> SessionStore:
        """Where session records live (`SessionSettings.store`)."""
        return self._store

    @store.setter
    def store(self, store: SessionStore) -> None:
        self._store = store
        # Its answer without I/O (an in-process store, a local-cache hit), looked up once: `lookup` asks it first.
        self._peek_load = getattr(store, "peek_load", None)

    # ---- cookies ----

    def read_cookie(self, state: SessionState) -> str | None:
        values = state.view.header_values("cookie")
        if not values:
            return None
        now = time.time()
        if len(values) == 1:
            # A browser sends the same Cookie header again and again: its whole value, once read, names the id.
            known = self._headers.get(values[0])
            if known is not None and now - known[1] <= self._max_age:
                return known[0]
        name = self.cookie_name
        found: list[str] = []
        for header in values:
            if name not in header:
                continue
            for pair in header.split(";"):
                key, sep, value = pair.strip().partition("=")
                if sep and key == name:
                    found.append(value)
        if not found:
            return None
        # P22: a duplicate (tossed) cookie, an oversized or oddly shaped value: no session, and clear it.
        value = found[0]
        if len(found) > 1:
            state.bad_cookie = True
            return None
        verified = self._verified.get(value)  # only values that passed every check below are remembered
        if verified is not None and now - verified[1] <= self._max_age:
            self._remember_header(values, verified)
            return verified[0]
        too_large = len(name) + 1 + len(value) > self._max_cookie  # P13: name and value together
        if too_large or _COOKIE_VALUE.fullmatch(value) is None:
            state.bad_cookie = True
            return None
        try:
            # The age is checked below, not by itsdangerous, which refuses any signature from the future: a cookie
            # set by a host whose clock is a little ahead (or the second before an NTP step back) would log out.
            public_bytes, signed_at, tag_mask = self._unsign(value)
            public = public_bytes.decode("ascii")
            age = self._signer.get_timestamp() - int(signed_at.timestamp())  # on the clock that signs
        except (BadSignature, UnicodeDecodeError, ValueError, OverflowError):
            state.bad_cookie = True
            return None
        if not -COOKIE_CLOCK_SKEW <= age <= int(self._max_age):
            state.bad_cookie = True
            return None
        signature = value.rsplit(".", 1)[-1]
        if _SID.fullmatch(public) is None or not _canonical_base64(signature):
            # One issued value, one accepted spelling: no equivalent variants of a cookie (P22, P30).
            state.bad_cookie = True
            return None
        # The cookie shows a masked tag (P16): unmasked with the mask of the key that signed it.
        sid = tag_mask.unmask(public)
        # The signature check is the expensive part of a session request: remember verified values (bounded).
        # A remembered value only ever names its id; the store still decides whether that session lives.
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[value] = verified = (sid, signed_at.timestamp())
        self._remember_header(values, verified)
        return sid

    def _remember_header(self, values: list[str], verified: tuple[str, float]) -> None:
        """Remember a lone Cookie header that names a verified id (bounded: entries and their length)."""
        if len(values) == 1 and len(values[0]) <= 1024:
            if len(self._headers) >= 4096:
                self._headers.clear()
            self._headers[values[0]] = verified

    def _unsign(self, value: str) -> tuple[bytes, Any, TagMask]:
        """A cookie value's payload, signing time, and the mask of the key that signed it; `BadSignature` when no
        key did. itsdangerous's multi-key signer does not say which key verified, hence one signer per key."""
        for signer, tag_mask in self._signers:
            try:
                payload, signed_at = signer.unsign(value, return_timestamp=True)
            except BadSignature:
                continue
            return payload, signed_at, tag_mask
        raise BadSignature("signed with none of the keys")

    def cookie_for(self, sid: str, remember: bool) -> str:
        value = self._signer.sign(self.tag_mask.mask(sid)).decode("ascii")
        cookie = f"{self.cookie_name}={value}; {self._attributes}"
        if remember:
            cookie += f"; Max-Age={int(self.settings.remember_absolute_timeout)}"
        return cookie

    def clearing_cookie(self) -> str:
        return f"{self.cookie_name}=; {self._attributes}; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"

    # ---- resolving the caller ----

    def resolve(self, state: SessionState) -> Flow[Principal | None]:
        """`lookup` as a flow (for callers that drive flows)."""
        return (yield from settled(self.lookup(state)))

    def lookup(self, state: SessionState) -> Principal | Pending[Principal | None] | None:
        """The principal of the request's session cookie, or None (an invalid cookie is cleared): at once when the
        store answers without I/O (`peek_load`), else a `Pending` whose flow loads the record and finishes."""
        sid = state.cookie_sid()
        if sid is None:
            return None
        peek = self._peek_load
        record = peek(sid, self.touch_interval) if peek is not None else MISS
        if record is MISS:
            return Pending(self._loaded(state, sid))
        return self.principal_for(state, sid, record)

    def _loaded(self, state: SessionState, sid: str) -> Flow[Principal | None]:
        record = yield from self.store.load(sid, self.touch_interval)
        return self.principal_for(state, sid, record)

    def principal_for(self, state: SessionState, sid: str, record: SessionRecord | None) -> Principal | None:
        """The principal of the record the cookie's `sid` names (None: no live session; the cookie is cleared)."""
        if record is None or record.absolute_expiry <= time.time():
            state.bad_cookie = True
            return None
        state.record = record
        known = self._principals.get(sid)
        if known is not None:
            scopes, principal = known
            if (
                scopes == record.scopes
                and principal.id == record.user_id
                and principal.auth_time == record.auth_time
                and principal.issued_at == record.created
                and principal.expires_at == record.absolute_expiry
            ):
                return principal
        principal = self.principal_of(record)
        if len(self._principals) >= 10_000:
            self._principals.clear()
        self._principals[sid] = (record.scopes, principal)
        return principal

    @staticmethod
    def principal_of(record: SessionRecord) -> Principal:
        return Principal(
            id=record.user_id,
            source="session",
            scopes=frozenset(record.scopes),
            auth_time=record.auth_time,
            issued_at=record.created,
            expires_at=record.absolute_expiry,
            session_handle=session_handle(record.sid),
        )

    # ---- CSRF (P23) ----

    def csrf_token(self, sid: str) -> str:
        """A signed double-submit token bound to the session id (send it back in the CSRF header)."""
        return self._csrf_signer.get_signature(sid.encode()).decode("ascii")

    def cross_site_reason(self, view: RequestView, *, websocket: bool = False) -> str | None:
        """`cross_site_reason` with these settings' origins."""
        settings = self.settings
        return cross_site_reason(
            view,
            settings.trusted_origins,
            websocket=websocket,
            origins=settings.origins,
            require_origin=settings.require_origin,
        )

    def check_cross_site(self, state: SessionState, *, websocket: bool = False) -> None:
        """Refuse an unsafe cookie-authenticated request that a browser says came from another site."""
        view = state.view
        reason = self.cross_site_reason(view, websocket=websocket)
        if reason is not None:
            raise CSRFError(reason, reason="csrf_" + reason.split()[0].lower().replace("-", "_"))
        if self.settings.csrf_require_token and not websocket and view.method not in SAFE_METHODS:
            presented = view.header(self.settings.csrf_header)
            record = state.record
            expected = self.csrf_token(record.sid) if record is not None else ""
            if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
                raise CSRFError("missing or invalid CSRF token", reason="csrf_token")

    # ---- lifecycle flows (run by SessionHandle / AsyncSessionHandle) ----

    def _new_record(
        self, state: SessionState, user_id: str, scopes: Iterable[str], remember: bool, auth_time: float | None
    ) -> SessionRecord:
        if not isinstance(user_id, str) or not user_id or CONTROL_CHARACTERS.search(user_id):
            # Control characters are refused, as in a JWT's `sub`: a newline would split the local caches'
            # invalidation messages (and log lines) in two.
            raise ValueError("a session needs a non-empty user id without control characters")
        now = time.time()
        settings = self.settings
        idle = settings.remember_idle_timeout if remember else settings.idle_timeout
        absolute = settings.remember_absolute_timeout if remember else settings.absolute_timeout
        view = state.view
        return SessionRecord(
            sid=f"{user_tag(user_id)}.{secrets.token_urlsafe(32)}",
            user_id=user_id,
            scopes=tuple(sorted(set(scopes))),
            created=now,
            auth_time=now if auth_time is None else auth_time,
            absolute_expiry=now + absolute,
            idle_timeout=idle,
            last_seen=now,
            user_agent=(view.header("user-agent") or "")[:256],
            ip=view.client_address or "",
            remember=remember,
        )

    def login(
        self,
        state: SessionState,
        user_id: str,
        scopes: Iterable[str] = (),
        *,
        remember: bool = False,
        data: dict[str, Any] | None = None,
    ) -> Flow[Principal]:
        """Start a new session (always a new id: fixation defence) and drop the one the cookie named."""
        old = state.record
        if old is None and (old_sid := state.cookie_sid()) is not None:
            old = yield from self.store.load(old_sid, self.touch_interval)
        if old is not None:
            yield from self.store.delete(old.sid, old.user_id)
        record = self._new_record(state, user_id, scopes, remember, None)
        if data:
            record.data = dict(data)
        yield from self.store.create(record)
        state.record = record
        state.data_snapshot = None
        state.set_cookie = self.cookie_for(record.sid, remember)
        if old is not None:
            self.auditor.emit("logout", user_id=old.user_id, session=session_handle(old.sid), reason="replaced")
        self.auditor.emit("login", user_id=user_id, session=session_handle(record.sid))
        return self.principal_of(record)

    def rotate(self, state: SessionState, scopes: Iterable[str] | None = None) -> Flow[Principal]:
        """New id for the current session (on a privilege change), optionally with new scopes; atomic."""
        old = state.record
        if old is None:
            raise LookupError("no session to rotate")
        record = self._new_record(
            state, old.user_id, old.scopes if scopes is None else scopes, old.remember, old.auth_time
        )
        record.created = old.created
        record.absolute_expiry = old.absolute_expiry
        record.data = old.data
        if not (yield from self.store.rotate(old.sid, record)):
            # Logged out meanwhile: never resurrect (P18/P20).
            state.record = None
            state.clear_cookie = True
            raise LookupError("the session ended before it could be rotated")
        state.record = record
        state.set_cookie = self.cookie_for(record.sid, record.remember)
        self.auditor.emit("rotate", user_id=record.user_id, session=session_handle(record.sid))
        return self.principal_of(record)

    def logout(self, state: SessionState) -> Flow[bool]:
        """Delete this session's record and clear the cookie (P20)."""
        record = state.record
        if record is None and (sid := state.cookie_sid()) is not None:
            record = yield from self.store.load(sid, self.touch_interval)
        deleted = False
        if record is not None:
            deleted = bool((yield from self.store.delete(record.sid, record.user_id)))
            self.auditor.emit("logout", user_id=record.user_id, session=session_handle(record.sid))
        state.record = None
        state.set_cookie = None
        state.clear_cookie = True
        return deleted

    def logout_everywhere(self, state: SessionState, user_id: str | None = None) -> Flow[int]:
        """End every session of the user (the current one's by default), revoke their refresh tokens and every
        access token issued before now, and clear this cookie."""
        if user_id is None:
            if state.record is None:
                raise LookupError("no session: name the user")
            user_id = state.record.user_id
        # Sessions, refresh-token families and earlier access tokens go together: logging out everywhere ends all.
        now = time.time()
        count = yield from self.store.revoke_user(user_id, now, self.not_before_ttl)
        stores = [self.store]
        if self.token_store is not None and self.token_store is not self.store:
            yield from self.token_store.revoke_user(user_id, now, self.not_before_ttl)
            stores.append(self.token_store)
        if state.record is not None and state.record.user_id == user_id:
            state.record = None
            state.set_cookie = None
            state.clear_cookie = True
        self.auditor.emit("logout_everywhere", user_id=user_id, reason=f"{count} sessions")
        for store in stores:  # then tokens minted while the revocation was on its way are refused too
            yield from restamp_not_before(store, user_id, self.not_before_ttl)
        return count

    def list_sessions(self, state: SessionState | None, user_id: str) -> Flow[list[SessionInfo]]:
        records = yield from self.store.list_user(user_id)
        current = state.record.sid if state is not None and state.record is not None else None
        infos = [SessionInfo.of(r, current=r.sid == current) for r in records]
        return sorted(infos, key=lambda info: info.created)

    def revoke_session(self, state: SessionState | None, user_id: str, handle: str) -> Flow[bool]:
        """Delete the session of `user_id` named by `handle` (from `list_sessions`)."""
        records = yield from self.store.list_user(user_id)
        for record in records:
            if hmac.compare_digest(session_handle(record.sid), handle):
                deleted = bool((yield from self.store.delete(record.sid, record.user_id)))
                self.auditor.emit("revoke_session", user_id=user_id, session=handle)
                if state is not None and state.record is not None and state.record.sid == record.sid:
                    state.record = None
                    state.clear_cookie = True
                return deleted
        return False

    def save_data(self, state: SessionState) -> Flow[bool]:
        """Write the data bag back if it changed (only while the session exists: no resurrection)."""
        record = state.record
        if record is None or not state.data_changed():
            return False
        if len(_dump(record.data)) > self.settings.max_data_bytes:
            log.warning("authmw: session data over %d bytes not saved", self.settings.max_data_bytes)
            return False
        saved = bool((yield from self.store.save(record)))
        state.data_snapshot = _dump(record.data)
        return saved


def _canonical_base64(text: str) -> bool:
    try:
        return base64_encode(base64_decode(text)).decode("ascii") == text
    except (BadData, ValueError):
        return False


def request_origin(view: RequestView) -> str | None:
    """The request's own origin: its scheme and Host, or what the trusted proxies forwarded (`RequestView.public_host`,
    `public_scheme`); None when there is no usable Host."""
    host = view.public_host
    if not host:
        return None
    scheme = _OWN_SCHEMES.get(view.public_scheme.lower())
    return _origin_of(f"{scheme}://{host}") if scheme is not None else None


_OWN_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}

#: why `require_origin` refuses a request (its first word gives the reason code, `csrf_missing`)
MISSING_ORIGIN = (
    "Missing Origin: the request has none of Origin, Referer and Sec-Fetch-Site (which browsers send), and this"
    " service requires one"
)


def cross_site_reason(
    view: RequestView,
    trusted: Sequence[str] = (),
    *,
    websocket: bool = False,
    origins: Sequence[str] = (),
    require_origin: bool = False,
) -> str | None:
    """Why a request must be refused as cross-site, or None. Unsafe methods only (and websocket handshakes).

    Fetch Metadata first (`Sec-Fetch-Site`), then `Origin`, then `Referer`. The site's own origin is `origins` when
    configured, else the request's scheme and Host (`request_origin`); `trusted` origins are accepted besides.

    A request with none of the three headers passes unless `require_origin`: CSRF needs a browser's ambient cookie,
    and browsers send Origin on every request whose method is not GET or HEAD and on websocket handshakes (and
    Sec-Fetch-Site on every request to an HTTPS or localhost site), so no page can make one send a request without
    them; only non-browser clients, which hold the cookie themselves, do.
    """
    if view.method in SAFE_METHODS and not websocket:
        return None
    site = view.header_values("sec-fetch-site")
    if site and site[0].strip().lower() in ("cross-site", "same-site"):
        return "Sec-Fetch-Site says the request is cross-site"
    origin = view.header_values("origin")
    if origin:
        value = origin[0].strip()
        normalized = _origin_of(value) if value != "null" else None
        if normalized is None or not _is_own(normalized, view, trusted, origins):
            return "Origin is not this site"
        return None
    if websocket:
        return MISSING_ORIGIN if require_origin and not site else None
    referer = view.header_values("referer")
    if referer and not site:
        normalized = _origin_of(referer[0].strip())
        if normalized is None or not _is_own(normalized, view, trusted, origins):
            return "Referer is not this site"
    elif require_origin and not site:
        return MISSING_ORIGIN
    return None


def _is_own(origin: str, view: RequestView, trusted: Sequence[str], origins: Sequence[str]) -> bool:
    if origin in trusted:
        return True
    # Configured origins replace the Host header: a client (or a proxy passing X-Forwarded-Host on) chooses that.
    return origin in origins if origins else origin == request_origin(view)


class BaseSessionHandle:
    """The session of one request: what needs no I/O. `SessionHandle` (WSGI) and `AsyncSessionHandle` (ASGI) add the
    operations, each one `SessionManager` flow run by its world's runner."""

    __slots__ = ("_state",)

    def __init__(self, state: SessionState) -> None:
        self._state = state

    @property
    def manager(self) -> SessionManager:
        return self._state.manager

    @property
    def principal(self) -> Principal | None:
        record = self._state.record
        return None if record is None else SessionManager.principal_of(record)

    @property
    def data(self) -> dict[str, Any]:
        """The session's small data bag; saved at the end of the request if it changed."""
        return self._state.watch_data()

    def cross_site_reason(self) -> str | None:
        """Why this request looks cross-site (e.g. a login CSRF attempt), or None; see `cross_site_reason`."""
        return self.manager.cross_site_reason(self._state.view)

    @property
    def client_address(self) -> str | None:
        """The caller's address: the peer's, or the one the trusted proxies forwarded (`AuthConfig.trusted_proxies`),
        as session records and a login throttle should see it."""
        return self._state.view.client_address

    @property
    def csrf_token(self) -> str | None:
        record = self._state.record
        return None if record is None else self.manager.csrf_token(record.sid)

    def _user(self, user_id: str | None) -> str:
        if user_id is not None:
            return user_id
        if self._state.record is None:
            raise LookupError("no session: name the user")
        return self._state.record.user_id


class SessionHandle(BaseSessionHandle):
    """The session of one WSGI request: plain methods (`login`, `logout`, …)."""

    __slots__ = ()

    def login(
        self, user_id: str, scopes: Iterable[str] = (), *, remember: bool = False, data: dict[str, Any] | None = None
    ) -> Principal:
        return run_sync(self.manager.login(self._state, user_id, scopes, remember=remember, data=data))

    def rotate(self, scopes: Iterable[str] | None = None) -> Principal:
        return run_sync(self.manager.rotate(self._state, scopes))

    def logout(self) -> bool:
        return run_sync(self.manager.logout(self._state))

    def logout_everywhere(self, user_id: str | None = None) -> int:
        return run_sync(self.manager.logout_everywhere(self._state, user_id))

    def list_sessions(self, user_id: str | None = None) -> list[SessionInfo]:
        return run_sync(self.manager.list_sessions(self._state, self._user(user_id)))

    def revoke_session(self, handle: str, user_id: str | None = None) -> bool:
        return run_sync(self.manager.revoke_session(self._state, self._user(user_id), handle))


class AsyncSessionHandle(BaseSessionHandle):
    """The session of one ASGI request: the same operations, awaitable."""

    __slots__ = ()

    async def login(
        self, user_id: str, scopes: Iterable[str] = (), *, remember: bool = False, data: dict[str, Any] | None = None
    ) -> Principal:
        return await run_async(self.manager.login(self._state, user_id, scopes, remember=remember, data=data))

    async def rotate(self, scopes: Iterable[str] | None = None) -> Principal:
        return await run_async(self.manager.rotate(self._state, scopes))

    async def logout(self) -> bool:
        return await run_async(self.manager.logout(self._state))

    async def logout_everywhere(self, user_id: str | None = None) -> int:
        return await run_async(self.manager.logout_everywhere(self._state, user_id))

    async def list_sessions(self, user_id: str | None = None) -> list[SessionInfo]:
        return await run_async(self.manager.list_sessions(self._state, self._user(user_id)))

    async def revoke_session(self, handle: str, user_id: str | None = None) -> bool:
        return await run_async(self.manager.revoke_session(self._state, self._user(user_id), handle))
