"""The token side of the hybrid: short access JWTs minted for a principal, and opaque rotating refresh tokens.

Refresh tokens are never JWTs: a random value (``<user tag>.<256 random bits>``, its tag masked when it leaves the
server: `authmw.masking`) that the store keeps only as a SHA-256 hash, bound to its user, its family and, when
issued from a session, to that session. Each use rotates it; presenting a used one again after a short grace window
revokes the whole family (reuse detection, OAuth 2.0 Security BCP §4.14). Revocation of access tokens is a jti
denylist (until `exp` plus the leeway) and a per-user not-before, both checked by the verifier after the signature;
the access tokens minted here also name their refresh family (claim `sid`), and are refused once it is revoked.

`TokenService` holds the two token endpoints (``POST /api/token``, ``POST /api/token/refresh``) as flows; the
adapters serve them.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from authmw.audit import Auditor
from authmw.errors import InvalidRequest, InvalidToken, MissingCredentials
from authmw.io import Flow
from authmw.keys import ALGORITHM_OBJECTS
from authmw.masking import TagMask
from authmw.principal import Principal
from authmw.stores import RefreshRecord, SessionStore, TokenStore, user_tag
from authmw.tokens import JWTSettings, signing_parameters, token_revocation_key

__all__ = ["NOT_CONFIGURED", "SESSIONS_ELSEWHERE", "TokenIssuer", "TokenService", "jti_key", "signing_parameters"]

#: the problem+json body of the token endpoints when the app cannot mint tokens (no signing key or store)
NOT_CONFIGURED: dict[str, Any] = {
    "type": "urn:authmw:problem:not_configured",
    "title": "Not configured",
    "status": 501,
    "detail": "token issuance needs JWT settings with a signing key (AUTHMW_JWT_SIGNING_KEY) and a store",
}
#: the problem+json body of ``POST /api/token`` when refresh tokens cannot be bound to sessions (other stores)
SESSIONS_ELSEWHERE: dict[str, Any] = {
    **NOT_CONFIGURED,
    "detail": "the token endpoint binds refresh tokens to the session they come from, so both must be in one store:"
    " leave JWTSettings.revocation_store unset, or make it the session store",
}

_REFRESH_TOKEN = re.compile(r"[0-9a-f]{4}\.[A-Za-z0-9_-]{43}")
#: the most of a refresh request's body the endpoints read (a refresh token is 48 characters)
MAX_REFRESH_BODY = 4096


def jti_key(issuer: str | None, jti: str) -> str:
    """The denylist key of a token: ``(iss, jti)``, never the raw token string (P30: JWT malleability)."""
    return token_revocation_key(issuer, jti)


class TokenIssuer:
    """Mints access tokens the configured verifier accepts, and publishes the public keys as a JWKS."""

    def __init__(self, settings: JWTSettings) -> None:
        self.settings = settings
        key, self.algorithm, self.kid = signing_parameters(settings)
        # Prepared once (P32 checks included); PyJWT's algorithm object does the signing.
        self._key = ALGORITHM_OBJECTS[self.algorithm].prepare_key(key)
        self.headers: dict[str, Any] = {"typ": settings.access_token_type}
        if self.kid is not None:
            self.headers["kid"] = self.kid

    def mint(
        self,
        subject: str,
        scopes: Iterable[str] = (),
        *,
        auth_time: float | None = None,
        now: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A signed access token and its claims."""
        settings = self.settings
        issued = time.time() if now is None else now
        # Fractional iat: a token minted right after a logout-everywhere must not fall before its not-before.
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": issued,
            "exp": int(issued + settings.access_token_ttl),
            "jti": uuid.uuid4().hex,
        }
        scope_list = sorted(set(scopes))
        if scope_list:
            claims["scope"] = " ".join(scope_list)
        if settings.issuer is not None:
            claims["iss"] = settings.issuer if isinstance(settings.issuer, str) else next(iter(settings.issuer))
        if settings.audience is not None:
            claims["aud"] = settings.audience if isinstance(settings.audience, str) else list(settings.audience)
        if auth_time is not None:
            claims["auth_time"] = int(auth_time)
        if extra:
            claims.update(extra)
        return pyjwt.encode(claims, self._key, algorithm=self.algorithm, headers=self.headers), claims

    def jwks(self) -> dict[str, Any]:
        """The public verification keys as a JWKS document (HMAC secrets are never published)."""
        keys = []
        for key in self.settings.keyset.keys:
            if key.is_hmac:
                continue
            material = key.material
            if isinstance(material, rsa.RSAPublicKey):
                jwk = RSAAlgorithm.to_jwk(material, as_dict=True)
            elif isinstance(material, ec.EllipticCurvePublicKey):
                jwk = ECAlgorithm.to_jwk(material, as_dict=True)
            elif isinstance(material, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                jwk = OKPAlgorithm.to_jwk(material, as_dict=True)
            else:  # pragma: no cover - VerificationKey admits no other types
                continue
            jwk.pop("key_ops", None)  # RFC 7517 §4.3: not together with "use"
            jwk["use"] = "sig"
            if key.kid is not None:
                jwk["kid"] = key.kid
            usable = sorted(key.algorithms & set(self.settings.algorithms))
            if self.kid is not None and key.kid == self.kid:
                jwk["alg"] = self.algorithm
            elif len(usable) == 1:
                jwk["alg"] = usable[0]
            keys.append(jwk)
        return {"keys": keys}


class TokenService:
    """``POST /api/token`` (a session's principal → a token pair) and ``POST /api/token/refresh``, sans-IO."""

    def __init__(
        self,
        issuer: TokenIssuer,
        store: TokenStore,
        auditor: Auditor | None = None,
        session_store: Any = None,
        mask_secrets: Sequence[bytes] | None = None,
    ) -> None:
        self.issuer = issuer
        self.store = store
        #: where sessions live, when not in `store`: refresh tokens are then not bound to them (`binds_sessions`)
        self.session_store = session_store
        self.settings = issuer.settings
        self.auditor = auditor or Auditor(None, secrets.token_bytes(32))
        # The refresh tokens' tag masks: from the session keys (the Authenticator passes them; the first masks, all
        # unmask), else from the signing key, the one secret every process that mints or refreshes holds.
        sources = list(mask_secrets) if mask_secrets else [_key_bytes(issuer._key)]
        self.tag_masks = [TagMask(secret) for secret in sources]

    def _pair(self, record: RefreshRecord, token: str, now: float) -> dict[str, Any]:
        # `now` was taken before the store call: a logout-everywhere that lands during it writes a not-before
        # later than this iat once it has landed (`restamp_not_before`), so the access token minted here is
        # refused like every other older one.
        # `sid` names the refresh family (never the session): revoking the family (reuse, logout) ends this token.
        access, _ = self.issuer.mint(
            record.user_id, record.scopes, auth_time=record.auth_time or None, now=now, extra={"sid": record.family}
        )
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.settings.access_token_ttl),
            "refresh_token": token,
            "scope": " ".join(record.scopes),
        }

    def _new_refresh(
        self, user_id: str, family: str, scopes: Iterable[str], session_sid: str | None, auth_time: float, now: float
    ) -> tuple[RefreshRecord, str]:
        internal = f"{user_tag(user_id)}.{secrets.token_urlsafe(32)}"
        record = RefreshRecord(
            token_hash=_refresh_hash(internal),
            user_id=user_id,
            family=family,
            scopes=tuple(sorted(set(scopes))),
            expires=now + self.settings.refresh_token_ttl,
            session_sid=session_sid,
            auth_time=auth_time,
            created=now,
        )
        return record, self.tag_masks[0].mask(internal)

    @property
    def binds_sessions(self) -> bool:
        """Can refresh tokens be bound to sessions? Only in the store that holds the sessions: it checks that the
        session lives, atomically, on every use (P18/P20: a logout ends that session's refresh tokens too)."""
        return self.session_store is None or self.session_store is self.store

    def issue_for_session(self, principal: Principal | None, session_sid: str | None) -> Flow[dict[str, Any]]:
        """``POST /api/token``: only a session (never a bearer token) can be exchanged for a token pair. The
        adapters answer `SESSIONS_ELSEWHERE` instead when `binds_sessions` is False."""
        if principal is None or principal.source != "session" or session_sid is None:
            raise MissingCredentials("a session is required to obtain tokens", reason="no_session")
        return (yield from self.issue(principal, session_sid))

    def issue(self, principal: Principal, session_sid: str | None = None) -> Flow[dict[str, Any]]:
        """A new token pair and a new refresh family for `principal` (bound to the session, if given)."""
        now = time.time()
        family = secrets.token_urlsafe(16)
        record, token = self._new_refresh(
            principal.id, family, principal.scopes, session_sid, principal.auth_time or now, now
        )
        family_expires = now + self.settings.refresh_family_ttl
        # The store refuses a family bound to a session that no longer exists, or one whose user's tokens were
        # all revoked after `now` (a logout-everywhere that landed while we got here).
        created = yield from self.store.refresh_create(record, family_expires, True)
        if not created and created is not None:  # None: a custom store that answers nothing, as stores once did
            raise MissingCredentials(
                "the session ended, or the user's tokens were revoked, before the tokens were issued",
                reason="session_ended",
            )
        return self._pair(record, token, now)

    def refresh(self, body: bytes) -> Flow[dict[str, Any]]:
        """Rotate the presented refresh token into a new pair; reuse revokes the whole family (401).

        Marking the token used and storing its successor is one atomic store operation: of concurrent
        presentations exactly one wins (grace 0), and no successor can outlive a family revoked meanwhile.
        """
        token = _refresh_token_from(body)
        now = time.time()
        random_part = secrets.token_urlsafe(32)
        # Each key's mask in turn, the current one first: a token masked before a key rotation is found on a later
        # try (one more store round trip, once per family: its successor gets the current mask).
        for tag_mask in self.tag_masks:
            internal = tag_mask.unmask(token)
            new_internal = f"{internal[:4]}.{random_part}"
            successor = (_refresh_hash(new_internal), now + self.settings.refresh_token_ttl)
            outcome, record = yield from self.store.refresh_use(
                internal[:4], _refresh_hash(internal), now, self.settings.refresh_reuse_grace, successor
            )
            if outcome != "invalid":
                break
        new_token = self.tag_masks[0].mask(new_internal)
        if outcome == "reuse":
            self.auditor.emit("refresh_reuse", user_id=record.user_id if record else None, reason="family revoked")
            raise InvalidToken("the refresh token was already used; its family is revoked", reason="refresh_reuse")
        if outcome not in ("ok", "grace") or record is None:
            raise InvalidToken("the refresh token is invalid, expired or revoked", reason=f"refresh_{outcome}")
        self.auditor.emit("refresh", user_id=record.user_id, reason=outcome)
        return self._pair(replace(record, token_hash=successor[0], expires=successor[1], used_at=0.0), new_token, now)

    def revoke_access_token(self, principal: Principal) -> Flow[None]:
        """Put a JWT principal's token on the denylist until the verifier would refuse it anyway."""
        if principal.token_id is None or principal.expires_at is None:
            raise ValueError("only a JWT principal with jti and exp can be revoked")
        key = jti_key(principal.issuer, principal.token_id)
        # Until the verifier stops accepting it: `exp` plus the clock-skew leeway it allows.
        until = float(principal.expires_at) + self.settings.leeway
        yield from self.store.revoke_jti(principal.id, key, until)
        self.auditor.emit("revoke_token", user_id=principal.id)

    def revoke_all_tokens(self, user_id: str) -> Flow[None]:
        """Every access token issued to the user before now is refused, and every refresh family ends;
        sessions stay (`logout_everywhere` ends those too)."""
        ttl = self.settings.max_lifetime + self.settings.leeway
        yield from self.store.revoke_tokens(user_id, time.time(), ttl)
        yield from restamp_not_before(self.store, user_id, ttl)
        self.auditor.emit("revoke_token", user_id=user_id, reason="all tokens")


def restamp_not_before(store: SessionStore | TokenStore, user_id: str, ttl: float) -> Flow[float]:
    """Once a revocation of the user's tokens (`revoke_tokens`, `revoke_user`) has landed, write their not-before
    again with the time now, and return it.

    The revocation reads its not-before before its store call. A refresh, or a token issued for a session, that
    commits in between mints an access token later than that, from a family or session the revocation then ends.
    Such a commit comes before the landing, so its token's `iat` is earlier than a not-before read after it: the
    token is refused with the older ones. This is a second `revoke_tokens`, which every store has: a login in the
    few milliseconds between the two loses its first access token and refresh family too (fail closed); its
    session is untouched and gets it a new pair from the token endpoint."""
    now = time.time()
    yield from store.revoke_tokens(user_id, now, ttl)
    return now


def _refresh_hash(internal: str) -> str:
    """What the store keeps of a refresh token: the SHA-256 of its internal (unmasked) form."""
    return hashlib.sha256(internal.encode()).hexdigest()


def _key_bytes(key: Any) -> bytes:
    """A signing key as bytes to derive from: an HMAC secret as it is, a private key as its PKCS#8 DER."""
    if isinstance(key, bytes):
        return key
    return bytes(
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _refresh_token_from(body: bytes) -> str:
    if len(body) > MAX_REFRESH_BODY:
        raise InvalidRequest("the request body is too large", reason="bad_refresh_request")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[…" nested deeper than Python
        raise InvalidRequest("the body must be JSON with a refresh_token", reason="bad_refresh_request") from None
    token = data.get("refresh_token") if isinstance(data, dict) else None
    if not isinstance(token, str):
        raise InvalidRequest("the body must be JSON with a refresh_token", reason="bad_refresh_request")
    if _REFRESH_TOKEN.fullmatch(token) is None:
        raise InvalidToken("the refresh token is invalid, expired or revoked", reason="refresh_malformed")
    return token
