"""End to end: the Starlette example under a real uvicorn on loopback, driven over HTTP with httpx.

Runs the bearer-token rows of the example-app contract on HS256, RS256 and ES256 configurations, including the
failure rows (forged, tampered, expired, wrong issuer/audience, algorithm confusion, malformed).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.conftest import APPS

pytestmark = pytest.mark.slow

ISSUER = "https://issuer.example"
AUDIENCE = "authmw-demo"


@dataclass
class Deployment:
    url: str
    algorithm: str
    signing_key: Any
    public_pem: bytes | None

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "scope": "items:read items:write",
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.signing_key, algorithm=self.algorithm)

    def get(self, path: str, token: str | None = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(self.url + path, headers=headers, timeout=5)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_by_hand(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(signing_input.encode())
    return f"{signing_input}.{_b64(mac.finalize())}"


def _deploy(tmp_path: Path, framework: str, algorithm: str) -> Iterator[Deployment]:
    env = {
        "AUTHMW_JWT_ISSUER": ISSUER,
        "AUTHMW_JWT_AUDIENCE": AUDIENCE,
        "AUTHMW_COOKIE_SECURE": "0",
        "AUTHMW_SECRET_KEYS": "e2e-cookie-key-" + "c" * 40,
    }
    public_pem: bytes | None = None
    signing_key: Any
    if algorithm == "HS256":
        signing_key = "e2e-secret-" + "x" * 40
        env |= {"AUTHMW_JWT_ALGORITHMS": "HS256", "AUTHMW_JWT_KEY": signing_key}
    else:
        private: Any = (
            rsa.generate_private_key(65537, 2048) if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
        )
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_file = tmp_path / "public.pem"
        key_file.write_bytes(public_pem)
        signing_key = private
        env |= {"AUTHMW_JWT_ALGORITHMS": "RS256,ES256", "AUTHMW_JWT_KEY": str(key_file)}
    with APPS[framework](env) as server:
        yield Deployment(server.url, algorithm, signing_key, public_pem)


@pytest.fixture(
    scope="module", params=[f"{fw}-{alg}" for fw in ("starlette", "flask") for alg in ("HS256", "RS256", "ES256")]
)
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    framework, algorithm = request.param.split("-")
    yield from _deploy(tmp_path_factory.mktemp(request.param), framework, algorithm)


def _challenge(response: httpx.Response) -> str:
    return response.headers.get("www-authenticate", "")


def test_health_and_home_are_public(deployment: Deployment) -> None:
    assert deployment.get("/health").json() == {"status": "ok"}
    home = deployment.get("/")
    assert home.status_code == 200
    assert 'action="/login"' in home.text


def test_valid_token_reaches_api_me(deployment: Deployment) -> None:
    response = deployment.get("/api/me", deployment.token())
    assert response.status_code == 200
    assert response.json() == {"id": "alice", "source": "jwt", "scopes": ["items:read", "items:write"]}
    assert response.headers["cache-control"] == "no-store"
    assert "Authorization" in response.headers["vary"]


def test_p24_no_credentials_is_401_without_error_code(deployment: Deployment) -> None:
    response = deployment.get("/api/me")
    assert response.status_code == 401
    assert _challenge(response).startswith('Bearer realm="authmw"')
    assert "error=" not in _challenge(response)
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "wrong_issuer",
        "issuer_prefix",
        "wrong_audience",
        "no_audience",
        "tampered",
        "forged",
        "garbage",
        "alg_none",
        "future_iat",
        "numeric_string_exp",
    ],
)
def test_bad_tokens_get_401_invalid_token(deployment: Deployment, case: str) -> None:
    now = int(time.time())
    token = {
        "expired": lambda: deployment.token(iat=now - 600, exp=now - 300),
        "wrong_issuer": lambda: deployment.token(iss="https://evil.example"),
        "issuer_prefix": lambda: deployment.token(iss="https://issuer.example.evil"),
        "wrong_audience": lambda: deployment.token(aud="someone-else"),
        "no_audience": lambda: deployment.token(aud=None),
        "future_iat": lambda: deployment.token(iat=now + 3600, exp=now + 7200),
        "numeric_string_exp": lambda: deployment.token(exp=str(now + 300)),
        "garbage": lambda: "not.a.jwt",
        "alg_none": lambda: (
            _b64(b'{"alg":"none","typ":"JWT"}')
            + "."
            + _b64(json.dumps({"sub": "alice", "iat": now, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE}).encode())
            + "."
        ),
    }.get(case)
    if case == "tampered":
        header, payload, signature = deployment.token().split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["sub"] = "mallory"
        token_value = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    elif case == "forged":
        other = (
            "another-secret-" + "y" * 40
            if deployment.algorithm == "HS256"
            else rsa.generate_private_key(65537, 2048)
            if deployment.algorithm == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )
        token_value = jwt.encode(
            {"sub": "alice", "iat": now, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE},
            other,
            algorithm=deployment.algorithm,
        )
    else:
        assert token is not None
        token_value = token()
    response = deployment.get("/api/me", token_value)
    assert response.status_code == 401, (case, response.text)
    assert 'error="invalid_token"' in _challenge(response)
    assert _challenge(response).startswith("Bearer ")
    assert token_value not in response.text


def test_algorithm_confusion_either_way(deployment: Deployment) -> None:
    """Asymmetric deployments: an HS256 token keyed with the public key PEM. HS256 deployments: a token signed
    with an asymmetric algorithm. Both are refused (P2, P3)."""
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE, "scope": "items:write"}
    if deployment.public_pem is not None:
        token = _hs256_by_hand({"alg": "HS256", "typ": "JWT"}, claims, deployment.public_pem)
    else:
        token = jwt.encode(claims, rsa.generate_private_key(65537, 2048), algorithm="RS256")
    response = deployment.get("/api/me", token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)


def test_scopes_on_items(deployment: Deployment) -> None:
    reader = deployment.token(scope="items:read")
    assert deployment.get("/api/items", reader).status_code == 200
    response = httpx.post(
        deployment.url + "/api/items", headers={"Authorization": f"Bearer {reader}"}, json={"name": "x"}, timeout=5
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in _challenge(response)
    assert 'scope="items:write"' in _challenge(response)
    writer = deployment.token()
    created = httpx.post(
        deployment.url + "/api/items", headers={"Authorization": f"Bearer {writer}"}, json={"name": "jam"}, timeout=5
    )
    assert created.status_code == 201
    assert created.json()["name"] == "jam"
    nothing = deployment.token(scope="")
    assert deployment.get("/api/items", nothing).status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer a b"},
        {"Authorization": "Bearer tok\u00e9n".encode()},
    ],
)
def test_malformed_authorization_is_400_invalid_request(deployment: Deployment, headers: dict[str, Any]) -> None:
    response = httpx.get(deployment.url + "/api/me", headers=headers, timeout=5)
    assert response.status_code == 400
    assert 'error="invalid_request"' in _challenge(response)


def test_p25_two_authorization_headers_is_400(deployment: Deployment) -> None:
    token = deployment.token()
    response = httpx.get(
        deployment.url + "/api/me",
        headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
        timeout=5,
    )
    assert response.status_code == 400
    assert 'error="invalid_request"' in _challenge(response)


def test_oversized_token_is_refused(deployment: Deployment) -> None:
    response = deployment.get("/api/me", "a" * 9000 + ".b.c")
    assert response.status_code in (400, 401, 431)
    assert response.status_code != 500
