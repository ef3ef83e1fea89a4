"""The attack corpus (`tests/corpus/attacks.json`), replayed through both shells with one configuration.

Every entry is one attack: on bearer JWTs (P2-P13, P24-P26), on session cookies (P16-P23, P30) or on the
per-route rules (path confusion). For each, the request is built by hand (base64url segments, HMAC/RSA/EC
signatures, itsdangerous signers), sent to a Starlette app behind `authmw.asgi.AuthMiddleware` (httpx
ASGITransport) and to a Flask app behind `authmw.wsgi.AuthMiddleware` (httpx WSGITransport, see
`tests/attack_harness.py` for why it builds the environ the way gunicorn does), and the answer must be exactly the
one the corpus names: status, every `WWW-Authenticate` value, the cookie-clearing `Set-Cookie` or none, an RFC 9457
body, nothing of the credential echoed, and the protected app never called.

The mini-language of a corpus entry's ``request`` (defaults in the file's ``defaults``):

``config``      ``"hs"`` (HS256, kid ``hs-2027``) or ``"rs"`` (RS256, kid ``rs-2027``); both with issuer and audience.
``token``       a JWT to build. ``header`` overrides ``{"alg", "typ": "JWT", "kid"}`` (``null`` removes a member);
                ``header_raw`` is literal JSON text (``header_encoding``: utf-8, utf-8-sig, utf-16, latin-1).
                ``claims`` overrides good access-token claims (``{"$now": n}`` is now + n, ``{"$repeat": [s, n]}``,
                ``{"$nest": n}``); ``claims_raw`` is literal text with ``$NOW``, ``$EXP``, ``$ISS``, ``$AUD``
                (``$BRACKETS3000``: 3000 nested arrays). ``sign``: ``"none"`` (empty signature) or
                ``{"alg", "key"}`` with a key name of `KEYS` or ``text:<secret>``. ``mutate``: names in `MUTATIONS`.
``authorization`` a template for the Authorization field (``null``: none); ``headers``: more fields;
                ``query``: the query string. Templates use ``{token}``, ``{cookie}``, ``{cookie2}``,
                ``{cookie_name}``, ``{many_cookies}`` and ``{canary}`` (a loopback URL that counts fetches).
``session``/``cookie2`` session cookies to mint (names in `SESSION_BUILDERS`).
``path``, ``raw_path`` the path, sent exactly as written when ``raw_path`` (no client-side dot-segment removal).

Path-confusion entries also ask the bare router (no middleware) which endpoint it would run: whenever that is the
admin endpoint, the protected answer must be 401 and the app must not be reached; ``/Admin`` and
``/administrator`` are different routes because both routers match case-sensitively and by whole segments.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import datetime
import hashlib
import hmac
import importlib
import json
import pkgutil
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from itsdangerous import TimestampSigner
from jwt.algorithms import RSAAlgorithm, get_default_algorithms
from tests.attack_harness import (
    ABSOLUTE_TIMEOUT,
    ATTACKER_EC_KEY,
    ATTACKER_RSA_KEY,
    AUDIENCE,
    COOKIE_NAME,
    HS_KID,
    HS_SECRET,
    IDLE_TIMEOUT,
    ISSUER,
    OTHER_SESSION_KEY,
    RAW_PATH_HEADER,
    RS_KID,
    RSA_KEY,
    RSA_PUBLIC_PEM,
    SESSION_KEY,
    TOUCH_INTERVAL,
    WRONG_SECRET,
    FakeClock,
    RawPathASGI,
    Recorder,
    ServerLikeWSGITransport,
    Shells,
    clearing_cookie,
    flask_app,
    make_config,
    starlette_app,
)

import authmw
from authmw.errors import AuthError
from authmw.io import run_sync
from authmw.masking import TagMask

CORPUS_PATH = Path(__file__).parent / "corpus" / "attacks.json"
CORPUS: dict[str, Any] = json.loads(CORPUS_PATH.read_text())
DEFAULTS: dict[str, Any] = CORPUS["defaults"]
ATTACKS: list[dict[str, Any]] = CORPUS["attacks"]
SHELLS = ("asgi", "wsgi")
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


# ---- key material an attacker might use ----


def _attacker_certificate() -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ATTACKER_RSA_KEY.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC))
        .sign(ATTACKER_RSA_KEY, hashes.SHA256())
    )
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")


_RSA_PUBLIC = RSA_KEY.public_key()
KEYS: dict[str, Any] = {
    "hs_secret": HS_SECRET,
    "wrong_secret": WRONG_SECRET,
    "empty": b"",
    "rsa": RSA_KEY,
    "attacker_rsa": ATTACKER_RSA_KEY,
    "attacker_ec": ATTACKER_EC_KEY,
    # The route's own RSA public key in every encoding an HMAC-confusion attacker would try (P3).
    "rsa_public_pem": RSA_PUBLIC_PEM,
    "rsa_public_pkcs1_pem": _RSA_PUBLIC.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
    "rsa_public_der": _RSA_PUBLIC.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "rsa_public_openssh": _RSA_PUBLIC.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    "rsa_public_jwk_json": RSAAlgorithm.to_jwk(_RSA_PUBLIC).encode(),
    "rsa_public_modulus": _RSA_PUBLIC.public_numbers().n.to_bytes(256, "big"),
}
HEADER_VALUES: dict[str, Any] = {
    "$ATTACKER_JWK": RSAAlgorithm.to_jwk(ATTACKER_RSA_KEY.public_key(), as_dict=True),
    "$ATTACKER_X5C": [_attacker_certificate()],
}


# ---- an SSRF canary: a loopback server that counts every request made to it ----


class Canary:
    def __init__(self) -> None:
        self.hits = 0
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                canary.hits += 1
                body = b'{"keys": []}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    server = Canary()
    try:
        yield server
    finally:
        server.stop()


# ---- tokens ----


def _expand(value: Any, now: int) -> Any:
    """The ``$now`` / ``$repeat`` / ``$nest`` forms of a claim or header value; everything else as is."""
    if isinstance(value, dict) and len(value) == 1:
        ((name, argument),) = value.items()
        if name == "$now":
            return now + argument
        if name == "$repeat":
            text, count = argument
            return text * count
        if name == "$nest":
            nested: Any = "deep"
            for _ in range(argument):
                nested = [nested]
            return nested
    if isinstance(value, str) and value in HEADER_VALUES:
        return HEADER_VALUES[value]
    return value


def _apply(base: dict[str, Any], overrides: dict[str, Any], now: int, canary_url: str) -> dict[str, Any]:
    out = dict(base)
    for name, value in overrides.items():
        if value is None:
            out.pop(name, None)
        else:
            value = _expand(value, now)
            out[name] = value.replace("{canary}", canary_url) if isinstance(value, str) else value
    return out


def good_claims(now: int) -> dict[str, Any]:
    return {
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": uuid.uuid4().hex,
        "scope": "items:read",
    }


def _raw_json(text: str, now: int) -> str:
    if text == "$BRACKETS3000":
        return "[" * 3000 + "]" * 3000
    for name, value in (("$NOW", now), ("$EXP", now + 300), ("$ISS", ISSUER), ("$AUD", AUDIENCE)):
        text = text.replace(name, str(value))
    return text


def _sign(signing_input: bytes, sign: Any, default_alg: str) -> str:
    if sign == "none":
        return ""
    alg = sign.get("alg", default_alg)
    key_name: str = sign["key"]
    key = key_name[5:].encode() if key_name.startswith("text:") else KEYS[key_name]
    if alg in HMAC_HASHES:
        # By hand: PyJWT (rightly) refuses PEM/SSH/JWK bytes as HMAC secrets, which is exactly the forgery here.
        return b64(hmac.new(key, signing_input, HMAC_HASHES[alg]).digest())
    return b64(get_default_algorithms()[alg].sign(signing_input, key))


def _flip_unused_bits(segment: str) -> str:
    assert len(segment) % 4 in (2, 3), "this segment has no unused bits"
    return segment[:-1] + B64URL[B64URL.index(segment[-1]) ^ 1]


MUTATIONS: dict[str, Callable[[str, int], str]] = {
    "drop_signature": lambda t, now: t.rsplit(".", 1)[0],
    "extra_segment": lambda t, now: t + "." + b64(b"extra"),
    "jwe": lambda t, now: ".".join([b64(b'{"alg":"dir","enc":"A256GCM"}'), "", b64(b"iv" * 6), b64(b"ct"), b64(b"t")]),
    "pad_payload": lambda t, now: "{}.{}==.{}".format(*t.split(".")),
    "pad_signature": lambda t, now: t + "=",
    "standard_base64": lambda t, now: t.translate(str.maketrans("-_", "+/")),
    "empty_header": lambda t, now: "." + t.split(".", 1)[1],
    "signature_aa": lambda t, now: t.rsplit(".", 1)[0] + ".AA",
    # Cut to a whole number of base64 quanta, so the shorter signature still decodes canonically.
    "truncate_signature": lambda t, now: t[: len(t) - len(t.rsplit(".", 1)[1]) % 4 - 4],
    "swap_payload": lambda t, now: "{}.{}.{}".format(
        t.split(".")[0],
        b64(json.dumps({**good_claims(now), "sub": "admin", "scope": "items:read admin"}).encode()),
        t.split(".")[2],
    ),
    "json_serialization": lambda t, now: json.dumps(
        {"protected": t.split(".")[0], "payload": t.split(".")[1], "signature": t.split(".")[2]},
        separators=(",", ":"),
    ),
}


def _mutation_applies(name: str, token: str) -> bool:
    """Some mutations need a token of a certain shape (a signature with '-'/'_', a payload with spare bits)."""
    signature = token.rsplit(".", 1)[1]
    if name == "standard_base64":
        return "-" in signature or "_" in signature
    return True


def build_token(spec: dict[str, Any], config: str, now: int, canary_url: str) -> str:
    """The token `spec` describes; when a mutation needs a certain shape, other filler lengths are tried."""
    alg, kid, key = ("HS256", HS_KID, "hs_secret") if config == "hs" else ("RS256", RS_KID, "rsa")
    noncanonical = spec.get("noncanonical", [])
    mutations = spec.get("mutate", [])
    for attempt in range(64):
        if "header_raw" in spec:
            header_segment = b64(spec["header_raw"].encode(spec.get("header_encoding", "utf-8")))
        else:
            header = _apply({"alg": alg, "typ": "JWT", "kid": kid}, spec.get("header", {}), now, canary_url)
            if attempt and "header" in noncanonical:
                header["x"] = "x" * attempt  # an unknown, ignored header member: only its length matters
            header_segment = b64(json.dumps(header, separators=(",", ":")).encode())
        if "claims_raw" in spec:
            payload_bytes = _raw_json(spec["claims_raw"], now).encode(spec.get("claims_encoding", "utf-8"))
        else:
            claims = _apply(good_claims(now), spec.get("claims", {}), now, canary_url)
            if attempt:
                claims["jti"] = f"{claims.get('jti', '')}{'x' * attempt}"
            payload_bytes = json.dumps(claims, separators=(",", ":")).encode()
        segments = {"header": header_segment, "payload": b64(payload_bytes)}
        # Non-canonical base64url (unused low bits set) is made *before* signing: only the encoding check can fail.
        if any(len(segments[name]) % 4 not in (2, 3) for name in noncanonical):
            continue
        for name in noncanonical:
            segments[name] = _flip_unused_bits(segments[name])
        signing_input = f"{segments['header']}.{segments['payload']}"
        token = f"{signing_input}.{_sign(signing_input.encode('ascii'), spec.get('sign', {'key': key}), alg)}"
        if all(_mutation_applies(m, token) for m in mutations):
            for name in mutations:
                token = MUTATIONS[name](token, now)
            return token
    raise AssertionError(f"no token shape fits {spec}")


# ---- session cookies ----


def _signer(key: str = SESSION_KEY, **options: Any) -> TimestampSigner:
    options.setdefault("salt", "authmw.session")
    options.setdefault("digest_method", hashlib.sha256)
    return TimestampSigner(key, **options)


class _FixedTimeSigner(TimestampSigner):
    def __init__(self, timestamp: int) -> None:
        super().__init__(SESSION_KEY, salt="authmw.session", digest_method=hashlib.sha256)
        self._timestamp = timestamp

    def get_timestamp(self) -> int:
        return self._timestamp


def sid_of(cookie: str) -> str:
    return _signer().unsign(cookie).decode()


def _replace_char(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def _logged_out(shells: Shells, clock: FakeClock) -> str:
    cookie = shells.login()
    shells.logout(cookie)
    return cookie


def _logged_out_everywhere(shells: Shells, clock: FakeClock) -> str:
    cookie = shells.login()
    shells.login()  # a second device
    shells.logout_everywhere("alice")
    return cookie


def _rotated_away(shells: Shells, clock: FakeClock) -> str:
    cookie = shells.login()
    shells.rotate(cookie)
    return cookie


def _idle_expired(shells: Shells, clock: FakeClock) -> str:
    cookie = shells.login()
    clock.advance(IDLE_TIMEOUT + 1)
    return cookie


def _absolute_expired(shells: Shells, clock: FakeClock) -> str:
    cookie = shells.login()
    sid = TagMask(SESSION_KEY.encode()).unmask(sid_of(cookie))  # the store's id: the cookie's tag unmasked
    store = shells.config.sessions.store  # type: ignore[union-attr]
    step = IDLE_TIMEOUT / 2
    while clock.offset + step < ABSOLUTE_TIMEOUT:
        clock.advance(step)
        assert run_sync(store.load(sid, TOUCH_INTERVAL)) is not None, (
            "kept active, the session lives until the absolute"
        )
    last_touch = clock.offset
    clock.advance(ABSOLUTE_TIMEOUT + 1 - clock.offset)
    assert clock.offset - last_touch < IDLE_TIMEOUT, "only the absolute timeout can have ended it"
    return cookie


def _tampered_timestamp(shells: Shells, clock: FakeClock) -> str:
    value = shells.login()
    sid, timestamp, signature = value.rsplit(".", 2)
    other = b64((int.from_bytes(unb64(timestamp), "big") - 1).to_bytes(4, "big"))
    return f"{sid}.{other}.{signature}"


SESSION_BUILDERS: dict[str, Callable[[Shells, FakeClock], str]] = {
    "valid": lambda shells, clock: shells.login(),
    "valid_bob": lambda shells, clock: shells.login("bob", ("items:read",)),
    "tampered_signature": lambda shells, clock: (lambda v: _replace_char(v, v.rindex(".") + 1))(shells.login()),
    "tampered_sid": lambda shells, clock: _replace_char(shells.login(), 10),
    "tampered_timestamp": _tampered_timestamp,
    "other_key": lambda shells, clock: _signer(OTHER_SESSION_KEY).sign(sid_of(shells.login())).decode(),
    "wrong_salt": lambda shells, clock: (
        TimestampSigner(SESSION_KEY, digest_method=hashlib.sha256).sign(sid_of(shells.login())).decode()
    ),
    "sha1_digest": lambda shells, clock: (
        TimestampSigner(SESSION_KEY, salt="authmw.session").sign(sid_of(shells.login())).decode()
    ),
    "unsigned_sid": lambda shells, clock: sid_of(shells.login()),
    "never_issued": lambda shells, clock: (
        _signer().sign(sid_of(shells.login())[:5] + secrets.token_urlsafe(32)).decode()
    ),
    "future_timestamp": lambda shells, clock: (
        _FixedTimeSigner(int(time.time()) + 86400).sign(sid_of(shells.login())).decode()
    ),
    "ancient_timestamp": lambda shells, clock: (
        _FixedTimeSigner(int(time.time()) - 31 * 86400).sign(sid_of(shells.login())).decode()
    ),
    "logged_out": _logged_out,
    "logged_out_malleated": lambda shells, clock: _flip_unused_bits(_logged_out(shells, clock)),
    "rotated_away": _rotated_away,
    "logged_out_everywhere": _logged_out_everywhere,
    "idle_expired": _idle_expired,
    "absolute_expired": _absolute_expired,
    "padded": lambda shells, clock: shells.login() + "=",
    "oversized": lambda shells, clock: shells.login() + "A" * 5000,
}


# ---- building and checking one attack ----


def _template(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def build_request(
    entry: dict[str, Any], shells: Shells, clock: FakeClock, canary_url: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The request to send (method, path, headers, query, raw_path) and the secrets it carries."""
    request = entry["request"]
    config = entry.get("config", DEFAULTS["config"])
    now = int(time.time())
    values = {"cookie_name": COOKIE_NAME, "canary": canary_url}
    if "token" in request:
        values["token"] = build_token(request["token"], config, now, canary_url)
    for slot in ("session", "cookie2"):
        if slot in request:
            values["cookie" if slot == "session" else "cookie2"] = SESSION_BUILDERS[request[slot]](shells, clock)
    if "cookie" in values:
        values["many_cookies"] = "; ".join(f"{COOKIE_NAME}={values['cookie']}" for _ in range(200))
    headers: list[tuple[bytes, bytes]] = []
    authorization = request.get("authorization", DEFAULTS["authorization"] if "token" in request else None)
    if authorization is not None:
        headers.append((b"authorization", _template(authorization, values).encode("latin-1")))
    for name, value in request.get("headers", []):
        headers.append((name.encode("latin-1"), _template(value, values).encode("latin-1")))
    secrets_sent = {k: v for k, v in values.items() if k in ("token", "cookie", "cookie2")}
    return {
        "method": request.get("method", DEFAULTS["method"]),
        "path": request.get("path", DEFAULTS["path"]),
        "headers": headers,
        "query": _template(request.get("query", ""), values),
        "raw_path": request.get("raw_path", False),
    }, secrets_sent


def bare_endpoint(shell: str, method: str, path: str) -> str | None:
    """Which endpoint the router alone (no authmw) runs for this exact path: the oracle for path confusion."""
    recorder = Recorder()
    headers = [(RAW_PATH_HEADER.encode(), path.encode("latin-1"))]
    if shell == "asgi":

        async def go() -> None:
            transport = httpx.ASGITransport(app=RawPathASGI(starlette_app(recorder)))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await client.request(method, "/", headers=headers)

        asyncio.run(go())
    else:
        transport = ServerLikeWSGITransport(app=flask_app(recorder))
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            client.request(method, "/", headers=headers)
    assert len(recorder.calls) == 1
    return recorder.calls[0].endpoint


def _no_echo(response: httpx.Response, sent: dict[str, str]) -> None:
    """P28: no credential, nor any sizeable piece of one, comes back in a header or the body."""
    haystacks = [response.text] + [v for k, v in response.headers.multi_items()]
    for value in sent.values():
        pieces = {value} | {p for p in value.replace(";", ".").split(".") if len(p) >= 16}
        for piece in pieces:
            if len(piece) < 16:
                continue
            for haystack in haystacks:
                assert piece not in haystack, "a credential was echoed in the response"


def _per_shell(value: Any, shell: str) -> Any:
    """An expectation that may differ by shell: ``{"asgi": …, "wsgi": …}``."""
    return value[shell] if isinstance(value, dict) else value


def _expected_status(expect: dict[str, Any], shell: str) -> int:
    return int(_per_shell(expect["status"], shell))


def run_attack(entry: dict[str, Any], shell: str, canary: Canary) -> None:
    clock = FakeClock()
    shells = Shells(make_config(entry.get("config", DEFAULTS["config"]), clock=clock))
    request, sent = build_request(entry, shells, clock, canary.url)
    hits_before = canary.hits
    recorder = shells.recorder(shell)
    response = shells.request(
        shell,
        request["method"],
        request["path"],
        request["headers"],
        raw_path=request["raw_path"],
        query=request["query"],
    )
    expect = entry["expect"]
    status = _expected_status(expect, shell)
    assert response.status_code == status, response.text
    assert response.headers.get_list("www-authenticate") == _per_shell(expect["www_authenticate"], shell)
    assert canary.hits == hits_before, "token content drove network I/O (P4)"
    _no_echo(response, sent)

    set_cookies = response.headers.get_list("set-cookie")
    if expect.get("clears_cookie"):
        assert set_cookies == [clearing_cookie()]
    else:
        assert set_cookies == []

    if entry["kind"] == "path":
        oracle = bare_endpoint(shell, request["method"], request["path"])
        if oracle == "admin":
            # Whatever the router would send to the admin endpoint is protected (or refused outright).
            assert status in (400, 401), "the corpus must expect the admin endpoint to be protected or refused"
        assert "admin" not in recorder.endpoints(), "an unauthenticated request reached the admin endpoint"
        if status == 401:
            assert recorder.calls == []
        return

    if expect.get("reaches_app"):
        assert len(recorder.calls) == 1
        call = recorder.calls[0]
        principal = expect["principal"]
        assert call.principal is not None
        assert {"id": call.principal.id, "source": call.principal.source, "scopes": sorted(call.principal.scopes)} == (
            principal
        )
        return

    # A refusal: the app was never called (P1), and the answer is an RFC 9457 problem that is never cached.
    assert recorder.calls == [], "the protected app was called although authentication failed"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    problem = response.json()
    assert problem["status"] == status
    challenges = _per_shell(expect["www_authenticate"], shell)
    codes = [c.split('error="', 1)[1].split('"', 1)[0] for c in challenges if 'error="' in c]
    if codes:
        assert problem["error"] == codes[0]
    else:
        assert "error" not in problem or status == 403
    # Our own descriptions need none of the header's sanitising (a quote would become a space): sent as written.
    for challenge in challenges:
        if 'error_description="' in challenge:
            assert challenge.split('error_description="', 1)[1].split('"', 1)[0] == problem["detail"]


def _param(entry: dict[str, Any], shell: str) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=entry["xfail"])] if "xfail" in entry else []
    return pytest.param(entry, shell, id=f"{entry['id']}-{shell}", marks=marks)


@pytest.mark.parametrize(("entry", "shell"), [_param(entry, shell) for entry in ATTACKS for shell in SHELLS])
def test_attack(entry: dict[str, Any], shell: str, canary: Canary) -> None:
    run_attack(entry, shell, canary)


# ---- the corpus itself ----


def test_corpus_is_well_formed() -> None:
    ids = [entry["id"] for entry in ATTACKS]
    assert len(ids) == len(set(ids)), "attack ids must be unique"
    assert len(ATTACKS) >= 60
    kinds = {entry["kind"] for entry in ATTACKS}
    assert kinds == {"control", "jwt", "cookie", "path"}
    for entry in ATTACKS:
        assert set(entry) <= {"id", "kind", "promise", "description", "config", "request", "expect", "xfail"}
        assert entry["promise"].startswith("P") and 1 <= int(entry["promise"][1:]) <= 32
        assert entry["description"].strip()
        assert "status" in entry["expect"] and "www_authenticate" in entry["expect"]
        assert "xfail" not in entry or entry["xfail"].startswith("BUG: ")
        request = entry["request"]
        for name in request.get("token", {}).get("mutate", []):
            assert name in MUTATIONS, name
        for slot in ("session", "cookie2"):
            assert slot not in request or request[slot] in SESSION_BUILDERS


def test_corpus_covers_every_attack_family_of_issue_6() -> None:
    """The families issue 6 names each have entries (so a pruned corpus fails loudly)."""
    ids = " ".join(entry["id"] for entry in ATTACKS)
    for family in (
        "alg-none",
        "confusion-",
        "kid-",
        "jku-",
        "x5u-",
        "embedded-jwk",
        "crit-",
        "header-kid-null",
        "expired-",
        "nbf-",
        "iss-",
        "aud-",
        "oversized-token",
        "two-authorization-fields",
        "cookie-tampered",
        "cookie-replayed-after-logout",
        "cookie-oversized",
        "cookie-many-same-name",
        "path-double-slash",
        "path-admin-trailing-slash",
        "path-case-variant",
        "path-percent-encoded-letter",
        "path-semicolon-parameter",
    ):
        assert family in ids, family


def _auth_error_names() -> set[str]:
    for module in pkgutil.iter_modules(authmw.__path__):
        importlib.import_module(f"authmw.{module.name}")  # every AuthError subclass defined
    names, todo = set(), [AuthError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def test_p28_refusal_descriptions_are_written_without_double_quotes() -> None:
    """`error_description` cannot carry a double quote (RFC 6750 §3), so the renderer turns one into a space: every
    message authmw writes does without, and is sent as written (the attack run saw 'the token has no  iat  claim')."""
    for entry in ATTACKS:
        expected = entry["expect"]["www_authenticate"]
        for challenges in expected.values() if isinstance(expected, dict) else [expected]:
            assert not [c for c in challenges if "  " in c], entry["id"]
    names = _auth_error_names()
    messages: list[tuple[str, int, str]] = []
    for path in sorted(Path(authmw.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            text = node.args[0]
            if called in names and isinstance(text, ast.Constant | ast.JoinedStr):
                parts = text.values if isinstance(text, ast.JoinedStr) else [text]
                written = "".join(str(p.value) for p in parts if isinstance(p, ast.Constant))
                messages.append((path.name, node.lineno, written))
    assert len(messages) > 50, "the scan no longer finds authmw's refusal messages"
    assert [m for m in messages if '"' in m[2]] == []
