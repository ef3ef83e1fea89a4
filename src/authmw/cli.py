"""The `authmw` command: small operator tools for keys, tokens and sessions.

    authmw keys hs                                   a random HMAC secret
    authmw keys rsa|ec|ed25519 --out DIR             a key pair and its JWKS, with the AUTHMW_* lines to use
    authmw keys jwks PEM [PEM ...]                   a JWKS of public keys
    authmw token mint --sub USER                     a signed access token (config from AUTHMW_* or options)
    authmw sessions list USER                        a user's sessions in Redis
    authmw sessions revoke USER HANDLE               end one session
    authmw sessions revoke-all USER                  end every session, refresh token and earlier access token
    authmw tokens revoke [TOKEN|-]                   deny one access token (read from stdin without TOKEN)
    authmw tokens revoke --jti JTI --sub USER --exp EPOCH     the same, named by its claims
    authmw tokens revoke-all USER                    revoke refresh tokens and earlier access tokens; sessions stay

A key pair's directory gets a .gitignore of "*" (unless it has one), so `git add .` never takes the private key.
The Redis commands use --redis-url (default $AUTHMW_REDIS_URL) and --prefix (default $AUTHMW_REDIS_PREFIX, else
"authmw:"); `tokens revoke` verifies a token with the AUTHMW_JWT_* settings, as `token mint` signs with them.

Exit codes: 0 done, 1 the operation failed (Redis unreachable, no such session, a token that does not verify,
refusing to overwrite a file), 2 bad arguments or configuration, 141 stdout was closed early (`authmw … | head`:
the rest of the output is dropped, as a program killed by SIGPIPE; the operation itself may have been done).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from authmw import __version__
from authmw.config import AuthConfig
from authmw.errors import ConfigurationError, InvalidToken, ServiceUnavailable
from authmw.io import run_sync
from authmw.issuer import TokenIssuer, jti_key, restamp_not_before
from authmw.keys import SUPPORTED_ALGORITHMS, KeySet, RemoteKeySet, VerificationKey
from authmw.sessions import SessionInfo
from authmw.stores import RedisStore, StoreUnavailable
from authmw.tokens import JWTSettings, JWTVerifier

__all__ = ["CLIError", "jwk_thumbprint", "main", "public_jwk"]

#: how long a per-user not-before is kept by default: it must outlive the longest access token (24 h by default)
DEFAULT_NOT_BEFORE_TTL = 2 * 24 * 3600.0
_CURVES: dict[str, tuple[ec.EllipticCurve, str]] = {
    "P-256": (ec.SECP256R1(), "ES256"),
    "P-384": (ec.SECP384R1(), "ES384"),
    "P-521": (ec.SECP521R1(), "ES512"),
}
# RFC 7638 §3.2: the required members of each key type, the only ones that enter the thumbprint.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
_KID_LENGTH = 16
_RESERVED_CLAIMS = frozenset({"sub"})
DEFAULT_PREFIX = "authmw:"
#: the exit code when stdout is closed early: 128 + SIGPIPE, what a shell reports for `yes | head`, so that
#: `set -o pipefail` scripts treat authmw like any other program whose reader went away
EXIT_BROKEN_PIPE = 141
#: written into a key pair's directory, as `python -m venv` does: `git add .` then never takes the private key
_GITIGNORE = b"# written by `authmw keys`: this directory holds a private key, never commit it\n*\n"
#: the most read from stdin for `tokens revoke` (the verifier refuses tokens over 8 KiB by default anyway)
_MAX_TOKEN_INPUT = 64 * 1024


class CLIError(Exception):
    """A failure reported as one line on stderr, with an exit code (1: operation failed, 2: usage/config)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------------------------------
# small helpers


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _epoch(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a time in seconds since 1970, not {text!r}")
    return value


def _secret_bytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 32 <= value <= 1024:
        raise argparse.ArgumentTypeError("must be between 32 and 1024 bytes")
    return value


def _printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped (user agents are attacker-controlled)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _iso(timestamp: float) -> str:
    if timestamp <= 0:
        return "-"
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)


def _redact(url: str) -> str:
    """The URL without its password, in the user part or a ``password=`` query parameter (safe to print)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        query = "&".join(
            f"{pair.partition('=')[0]}=***" if pair.partition("=")[0].lower() == "password" else pair
            for pair in parts.query.split("&")
        )
        if (netloc, query) == (parts.netloc, parts.query):
            return url
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<the given URL>"


def _read_file(path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Hide authmw's own log warnings (the CLI reports failures itself, in one line)."""
    logger = logging.getLogger("authmw")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _env_value(value: str) -> str:
    return shlex.quote(value)


# --------------------------------------------------------------------------------------------------
# JWKs


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of a public RSA, EC or OKP JWK."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError(f"no thumbprint for key type {jwk.get('kty')!r}")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _default_algorithm(key: VerificationKey) -> str:
    if len(key.algorithms) == 1:
        return next(iter(key.algorithms))
    return "RS256" if "RS256" in key.algorithms else sorted(key.algorithms)[0]


def public_jwk(public: Any, *, alg: str, kid: str | None = None) -> dict[str, Any]:
    """A public key as a JWK with ``kid`` (default: the first 16 characters of its RFC 7638 thumbprint),
    ``use: sig`` and ``alg``."""
    raw: Mapping[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        raw = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        raw = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raw = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        raise ConfigurationError(f"unsupported key type {type(public).__name__}")
    members = {name: value for name, value in raw.items() if name not in ("kid", "alg", "use", "key_ops")}
    jwk: dict[str, Any] = {
        "kty": members.pop("kty"),
        "kid": kid or jwk_thumbprint(raw)[:_KID_LENGTH],
        "use": "sig",
        "alg": alg,
    }
    jwk.update(members)
    return jwk


def _verification_key(data: bytes, *, algorithm: str | None, source: str) -> VerificationKey:
    try:
        return VerificationKey.public(data, algorithm=algorithm)
    except ConfigurationError as exc:
        raise CLIError(f"{source}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# keys


def _cmd_keys_hs(args: argparse.Namespace) -> int:
    print(secrets.token_urlsafe(args.bytes))
    return 0


def _write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write `data` to a new file created with `mode` (never wider); with `replace`, atomically over an old one."""
    target = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode == 0o600:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
        if replace:
            os.replace(target, path)
    except BaseException:
        if replace:
            with contextlib.suppress(OSError):
                target.unlink()
        raise


def _write_gitignore(directory: Path) -> Path | None:
    """Write a `.gitignore` of ``*`` into `directory` unless it has one (then it is left as it is); its path if
    written."""
    path = directory / ".gitignore"
    if path.exists() or path.is_symlink():
        return None
    try:
        _write_file(path, _GITIGNORE, 0o644, replace=False)
    except FileExistsError:  # written meanwhile
        return None
    return path


def _generate(args: argparse.Namespace) -> tuple[Any, str]:
    kind: str = args.kind
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=args.bits), "RS256"
    if kind == "ec":
        curve, alg = _CURVES[args.curve]
        return ec.generate_private_key(curve), alg
    return ed25519.Ed25519PrivateKey.generate(), "EdDSA"


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} exists and is not a directory")
    paths = {name: out / name for name in ("private.pem", "public.pem", "jwks.json")}
    existing = [str(p) for p in paths.values() if p.exists() or p.is_symlink()]
    if existing and not args.force:
        raise CLIError(f"refusing to overwrite {', '.join(existing)} (pass --force to replace)")
    private, alg = _generate(args)
    public = private.public_key()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = public_jwk(public, alg=alg, kid=args.kid)
    jwks = json.dumps({"keys": [jwk]}, indent=2) + "\n"
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        ignore = _write_gitignore(out)  # before the private key: it is never in the tree un-ignored
        _write_file(paths["private.pem"], private_pem, 0o600, replace=args.force)
        _write_file(paths["public.pem"], public_pem, 0o644, replace=args.force)
        _write_file(paths["jwks.json"], jwks.encode("utf-8"), 0o644, replace=args.force)
    except FileExistsError as exc:
        raise CLIError(f"refusing to overwrite {exc.filename} (pass --force to replace)") from None
    except OSError as exc:
        raise CLIError(f"cannot write to {out}: {exc.strerror or exc}") from None
    private_path, public_path, jwks_path = (str(p) for p in paths.values())
    if ignore is not None:
        print(f"authmw: wrote {ignore} so that git ignores this directory and its private key", file=sys.stderr)
    print(f"# wrote {private_path} (private key, mode 0600: keep it secret)")
    print(f"# wrote {public_path}")
    print(f"# wrote {jwks_path} (kid {jwk['kid']})")
    print(f"AUTHMW_JWT_KEY={_env_value(public_path)}")
    print(f"AUTHMW_JWT_SIGNING_KEY={_env_value(private_path)}")
    print(f"AUTHMW_JWT_ALGORITHMS={alg}")
    print(f"# to select keys by kid (rotation), use AUTHMW_JWT_JWKS={_env_value(jwks_path)} instead of AUTHMW_JWT_KEY")
    return 0


def _cmd_keys_jwks(args: argparse.Namespace) -> int:
    kids: list[str] = args.kid or []
    if kids and len(kids) != len(args.pem):
        raise CLIError(f"give one --kid per PEM file ({len(args.pem)}), or none", code=2)
    keys: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, path in enumerate(args.pem):
        key = _verification_key(_read_file(path), algorithm=args.alg, source=path)
        jwk = public_jwk(key.material, alg=args.alg or _default_algorithm(key), kid=kids[index] if kids else None)
        if jwk["kid"] in seen:
            raise CLIError(f"{path}: duplicate kid {jwk['kid']!r} (the same key twice?)")
        seen.add(jwk["kid"])
        keys.append(jwk)
    print(json.dumps({"keys": keys}, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------
# token mint


def _parse_claims(items: Sequence[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CLIError(f"--claim {item!r}: expected NAME=VALUE", code=2)
        if name in _RESERVED_CLAIMS:
            raise CLIError(f"--claim {name}: use --{name} instead", code=2)
        try:
            claims[name] = json.loads(text)
        except ValueError:
            claims[name] = text
    return claims


def _default_max_lifetime() -> float:
    """`JWTSettings.max_lifetime`'s default: what a middleware configured without it accepts."""
    for spec in dataclasses.fields(JWTSettings):
        if spec.name == "max_lifetime" and isinstance(spec.default, int | float):
            return float(spec.default)
    return 24 * 3600.0  # pragma: no cover


def _check_ttl(ttl: float, max_lifetime: float, what: str) -> None:
    if ttl > max_lifetime:
        raise CLIError(f"--ttl {ttl:g} is longer than {what}, {max_lifetime:g} s: the token would be refused", code=2)


def _settings_from_key(material: bytes, args: argparse.Namespace) -> JWTSettings:
    """JWT settings for signing with the key given on the command line (the environment is not read)."""
    alg: str | None = args.alg
    options: dict[str, Any] = {"issuer": args.iss, "audience": args.aud}
    if args.ttl is not None:
        _check_ttl(args.ttl, _default_max_lifetime(), "the middleware's default maximum token lifetime")
        options["access_token_ttl"] = args.ttl
    if material.lstrip().startswith(b"-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(material, password=None)
        except (ValueError, TypeError):
            try:
                serialization.load_pem_public_key(material)
            except ValueError:
                raise CLIError("the key is not an unencrypted PEM private key", code=2) from None
            raise CLIError("that is a public key: minting a token needs the private key", code=2) from None
        try:
            key = VerificationKey.public(private, algorithm=alg)
        except ConfigurationError as exc:
            raise CLIError(str(exc), code=2) from None
        alg = alg or _default_algorithm(key)
        kid = args.kid or public_jwk(key.material, alg=alg)["kid"]
        keys = KeySet([VerificationKey.public(private, kid=kid, algorithm=alg)])
        return JWTSettings(algorithms=[alg], keys=keys, signing_key=private, **options)
    alg = alg or "HS256"
    if alg not in SUPPORTED_ALGORITHMS or not alg.startswith("HS"):
        raise CLIError(f"--alg {alg}: an HMAC secret signs only HS256, HS384 or HS512", code=2)
    return JWTSettings(algorithms=[alg], keys=KeySet.from_key(material, kid=args.kid, algorithm=alg), **options)


def _env_jwt_settings(missing: str) -> JWTSettings:
    """The middleware's JWT settings from the AUTHMW_* environment; `missing` says what to set when there are none."""
    # Only the JWT variables: the session side (secret keys, Redis) has no say in minting or checking a token.
    env = {k: v for k, v in os.environ.items() if k.startswith(("AUTHMW_JWT_", "AUTHMW_ACCESS_TOKEN_"))}
    with _quiet_logs():
        settings = AuthConfig.from_env(env).jwt
    if settings is None:
        raise CLIError(f"no JWT configuration: {missing}", code=2)
    return settings


def _settings_from_env(args: argparse.Namespace) -> JWTSettings:
    """The middleware's JWT settings from the AUTHMW_* environment, with --alg/--iss/--aud/--ttl applied."""
    settings = _env_jwt_settings(
        "set AUTHMW_JWT_KEY (or AUTHMW_JWT_JWKS) and, for RS/ES/EdDSA keys, AUTHMW_JWT_SIGNING_KEY; "
        "or pass --key / --key-file"
    )
    changes: dict[str, Any] = {}
    if args.alg is not None:
        changes["algorithms"] = [args.alg]
    if args.iss is not None:
        changes["issuer"] = args.iss
    if args.aud is not None:
        changes["audience"] = args.aud
    if args.ttl is not None:
        _check_ttl(args.ttl, settings.max_lifetime, "the maximum token lifetime (AUTHMW_JWT_MAX_LIFETIME)")
        changes["access_token_ttl"] = args.ttl
    if changes:
        changes["keys"] = settings.keyset
        settings = dataclasses.replace(settings, **changes)
    if isinstance(settings.keyset, RemoteKeySet):
        settings.keyset.ensure_fresh()  # the issuer looks the signing key's kid up in the published keys
    return settings


def _issuer(settings: JWTSettings) -> TokenIssuer:
    """The middleware's own `TokenIssuer`; it refuses a signing key whose public half is not configured.

    One exception: with a JWKS URL that could not be fetched the signing key cannot be checked, so the token
    is signed with the key alone (no kid unless --kid), with a warning.
    """
    keyset = settings.keyset
    if not (isinstance(keyset, RemoteKeySet) and not keyset.keys and settings.signing_key is not None):
        return TokenIssuer(settings)
    material = settings.signing_key
    if isinstance(material, str | bytes):
        data = material.encode() if isinstance(material, str) else material
        try:
            material = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise CLIError("AUTHMW_JWT_SIGNING_KEY is not an unencrypted PEM private key", code=2) from None
    key = VerificationKey.public(material)
    algorithms = [name for name in settings.algorithms if name in key.algorithms] or list(settings.algorithms)
    alone = dataclasses.replace(settings, algorithms=algorithms[:1], keys=KeySet([key]), signing_key=material)
    issuer = TokenIssuer(alone)
    print(
        f"authmw: warning: the JWKS at {keyset.url} could not be fetched, so the signing key was not checked "
        "against it; the token has no kid unless --kid is given",
        file=sys.stderr,
    )
    return issuer


def _cmd_token_mint(args: argparse.Namespace) -> int:
    extra = _parse_claims(args.claim or [])
    scopes = sorted({scope for value in args.scope or [] for scope in value.split()})
    if args.key is not None:
        settings = _settings_from_key(args.key.encode("utf-8"), args)
    elif args.key_file is not None:
        settings = _settings_from_key(_read_file(args.key_file), args)
    else:
        settings = _settings_from_env(args)
    issuer = _issuer(settings)
    if args.kid is not None:
        issuer.headers["kid"] = args.kid
    token, claims = issuer.mint(args.sub, scopes, extra=extra or None)
    if args.json:
        # Read back from the token itself (with the alg PyJWT adds): it can never disagree with what was signed.
        header = jwt.get_unverified_header(token)
        print(json.dumps({"token": token, "header": header, "claims": claims}, indent=2))
    else:
        print(token)
    return 0


# --------------------------------------------------------------------------------------------------
# sessions and tokens in Redis


@contextlib.contextmanager
def _redis_store(args: argparse.Namespace) -> Iterator[RedisStore]:
    url: str | None = args.redis_url or os.environ.get("AUTHMW_REDIS_URL") or None
    if url is None:
        raise CLIError("no Redis URL: pass --redis-url URL or set AUTHMW_REDIS_URL", code=2)
    shown = _redact(url)
    prefix: str | None = args.prefix
    if prefix is None:
        prefix = os.environ.get("AUTHMW_REDIS_PREFIX", DEFAULT_PREFIX)
        if not prefix:  # set but empty: refused by the middleware's configuration too
            raise CLIError("AUTHMW_REDIS_PREFIX is empty: set it as the middleware has it, or unset it", code=2)
    try:
        store = RedisStore.from_url(url, prefix=prefix, socket_timeout=args.timeout, max_connections=4)
    except ImportError:
        raise CLIError("the redis package is not installed: pip install 'authmw[redis]'") from None
    except ValueError as exc:
        raise CLIError(f"invalid Redis URL {shown}: {exc}", code=2) from None
    from redis.exceptions import RedisError

    try:
        with _quiet_logs():
            yield store
    except (StoreUnavailable, RedisError) as exc:
        # The store wraps connection failures (the redis error is the context); anything else redis-py raises
        # (a protocol error from something that is not Redis, say) is reported the same way.
        cause = exc.__context__ if isinstance(exc, StoreUnavailable) else exc
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        raise CLIError(f"cannot reach Redis at {shown}{detail}") from None
    finally:
        with contextlib.suppress(Exception):
            store.client.close()


def _session_infos(store: RedisStore, user: str) -> list[tuple[SessionInfo, str]]:
    """The user's live sessions, oldest first, each with its (secret) id."""
    infos = [(SessionInfo.of(r), r.sid) for r in run_sync(store.list_user(user))]
    return sorted(infos, key=lambda pair: pair[0].created)


def _cmd_sessions_list(args: argparse.Namespace) -> int:
    with _redis_store(args) as store:
        infos = [info for info, _ in _session_infos(store, args.user)]
    if args.json:
        rows = [
            {
                "handle": i.handle,
                "user_id": i.user_id,
                "created": i.created,
                "last_seen": i.last_seen,
                "expires": i.expires,
                "user_agent": i.user_agent,
                "ip": i.ip,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not infos:
        print(f"no sessions for user {_printable(args.user)}")
        return 0
    header = ("HANDLE", "CREATED", "LAST SEEN", "EXPIRES", "IP", "USER AGENT")
    table = [header] + [
        (
            i.handle,
            _iso(i.created),
            _iso(i.last_seen),
            _iso(i.expires),
            _printable(i.ip) or "-",
            _printable(i.user_agent) or "-",
        )
        for i in infos
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header) - 1)]
    for row in table:
        print(("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row[:-1])) + "  " + row[-1]).rstrip())
    return 0


def _cmd_sessions_revoke(args: argparse.Namespace) -> int:
    with _redis_store(args) as store:
        for info, sid in _session_infos(store, args.user):
            if hmac.compare_digest(info.handle.encode(), args.handle.encode("utf-8", "surrogateescape")):
                if not run_sync(store.delete(sid, info.user_id)):
                    break  # it ended meanwhile
                print(f"revoked session {info.handle} of user {_printable(args.user)}")
                return 0
    raise CLIError(f"no session {_printable(args.handle)} for user {_printable(args.user)}")


def _cmd_sessions_revoke_all(args: argparse.Namespace) -> int:
    with _redis_store(args) as store:
        count = run_sync(store.revoke_user(args.user, time.time(), args.ttl))
        now = run_sync(restamp_not_before(store, args.user, args.ttl))
    print(
        f"revoked {count} session{'s' if count != 1 else ''} of user {_printable(args.user)}, "
        f"their refresh tokens, and access tokens issued before {_iso(now)}"
    )
    return 0


def _cmd_tokens_revoke_all(args: argparse.Namespace) -> int:
    with _redis_store(args) as store:
        run_sync(store.revoke_tokens(args.user, time.time(), args.ttl))
        now = run_sync(restamp_not_before(store, args.user, args.ttl))
    print(
        f"revoked the refresh tokens of user {_printable(args.user)} and access tokens issued before {_iso(now)} "
        "(sessions kept)"
    )
    return 0


def _token_input(text: str | None) -> str:
    """The token given as an argument, or (for none or ``-``) read from stdin, which keeps it out of `ps` and the
    shell's history."""
    if text is not None and text != "-":
        return text.strip()
    if sys.stdin is None:
        raise CLIError("no token: pass it, or pipe it to stdin", code=2)
    if sys.stdin.isatty():
        print("authmw: reading the token from stdin (end with Ctrl-D)", file=sys.stderr)
    token = sys.stdin.read(_MAX_TOKEN_INPUT).strip()
    if not token:
        raise CLIError("no token on stdin: pipe it in, pass it as an argument, or use --jti", code=2)
    return token


def _verified_token(settings: JWTSettings, token: str) -> tuple[str, str, float, str] | None:
    """The user, denylist key, exp and jti of a token the middleware accepts now; None if it has expired.

    Verified in full first (signature, then claims), as the middleware does: an unverified token would let
    anyone deny any token id of any user.
    """
    try:
        with _quiet_logs():
            settings.keyset.ensure_fresh()  # a JWKS URL: its keys, fetched now
            principal = JWTVerifier(settings).verify(token)
    except InvalidToken as exc:
        if exc.reason == "expired":
            return None
        raise CLIError(f"the token does not verify, nothing revoked: {exc.description}") from None
    except ServiceUnavailable:
        raise CLIError("cannot check the token: the JWKS could not be fetched") from None
    if principal.token_id is None or principal.expires_at is None:
        raise CLIError(
            f"the token has no {'jti' if principal.token_id is None else 'exp'} claim, so it cannot be denied "
            f"alone: `authmw tokens revoke-all {shlex.quote(_printable(principal.id))}` refuses all earlier tokens"
        )
    key = jti_key(principal.issuer, principal.token_id)  # TokenService.revoke_access_token's key
    return principal.id, key, float(principal.expires_at), principal.token_id


def _jti_issuer(settings: JWTSettings, given: str | None) -> str | None:
    """The iss of the token named by --jti: --iss, else the one configured issuer (part of the denylist key)."""
    configured = settings.issuer
    accepted = [configured] if isinstance(configured, str) else list(configured or ())
    if given is None:
        if len(accepted) > 1:
            raise CLIError(f"give --iss: AUTHMW_JWT_ISSUER accepts {len(accepted)} issuers", code=2)
        return accepted[0] if accepted else None
    if accepted and given not in accepted:
        raise CLIError(f"--iss {_printable(given)}: not an accepted issuer, so no such token is accepted", code=2)
    return given


def _named_token(settings: JWTSettings, args: argparse.Namespace) -> tuple[str, str, float, str] | None:
    """The user, denylist key, exp and jti of the token named by --jti/--sub/--exp/--iss; None if it has expired."""
    if args.sub is None or args.exp is None:
        raise CLIError("--jti needs --sub USER and --exp EPOCH (the token's sub and exp claims)", code=2)
    if not args.jti or not args.sub:
        raise CLIError("--jti and --sub must not be empty", code=2)
    issuer = _jti_issuer(settings, args.iss)
    now = time.time()
    if args.exp + settings.leeway <= now:
        return None
    # No token the middleware accepts now expires later (iat ≤ now + leeway, exp - iat ≤ max lifetime): a
    # mistyped exp, or one in milliseconds, would otherwise keep a useless key in Redis for ages.
    if args.exp > now + settings.leeway + settings.max_lifetime:
        raise CLIError(
            f"--exp {args.exp:.0f}: later than any token accepted now can expire "
            f"({_iso(now + settings.leeway + settings.max_lifetime)}); it is in seconds since 1970",
            code=2,
        )
    return args.sub, jti_key(issuer, args.jti), args.exp, args.jti


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:
    if args.jti is None and (args.sub, args.exp, args.iss) != (None, None, None):
        raise CLIError("--sub, --exp and --iss go with --jti (a token carries its own claims)", code=2)
    settings = _env_jwt_settings(
        "set AUTHMW_JWT_KEY or AUTHMW_JWT_JWKS (and AUTHMW_JWT_ISSUER, AUTHMW_JWT_AUDIENCE, AUTHMW_JWT_LEEWAY) "
        "as the middleware has them"
    )
    named = (
        _named_token(settings, args) if args.jti is not None else _verified_token(settings, _token_input(args.token))
    )
    if named is None:
        print("the token has expired (clock-skew leeway included): it is refused anyway, nothing to revoke")
        return 0
    user, key, expires, jti = named
    # As TokenService.revoke_access_token: denied until the verifier would refuse it anyway, exp plus the leeway.
    until = expires + settings.leeway
    with _redis_store(args) as store:
        run_sync(store.revoke_jti(user, key, until))
    print(f"revoked token {_printable(jti)} of user {_printable(user)}: refused until {_iso(until)}")
    return 0


# --------------------------------------------------------------------------------------------------
# the parser


class _Formatter(argparse.HelpFormatter):
    """Descriptions as written; a "(default: …)" after options that have a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (
            text
            and "%(default)" not in text
            and action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


class _OverviewFormatter(argparse.RawDescriptionHelpFormatter, _Formatter):
    """The top-level help: the module docstring's overview, laid out as written."""


def _add_redis_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Redis")
    group.add_argument(
        "--redis-url",
        metavar="URL",
        help="the sessions' Redis, e.g. redis://127.0.0.1:6379/0 (default: $AUTHMW_REDIS_URL)",
    )
    group.add_argument(
        "--prefix",
        help=f"the key prefix the middleware's RedisStore uses (default: $AUTHMW_REDIS_PREFIX, else {DEFAULT_PREFIX})",
    )
    group.add_argument(
        "--timeout", type=_positive_float, default=5.0, metavar="SECONDS", help="connect and command timeout"
    )


def _add_ttl_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ttl",
        type=_positive_float,
        default=DEFAULT_NOT_BEFORE_TTL,
        metavar="SECONDS",
        help="how long the not-before mark is kept; it must outlive the longest access token (max lifetime + leeway)",
    )


#: what `add_subparsers` returns, to which each command group adds its parsers
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_keys_commands(commands: _Commands) -> None:
    keys = commands.add_parser(
        "keys", help="generate signing keys and JWKS documents", description="Generate signing keys and JWKS."
    )
    key_commands = keys.add_subparsers(title="key commands", dest="key_command", required=True, metavar="KIND")
    hs = key_commands.add_parser(
        "hs",
        help="print a random HMAC secret (for AUTHMW_JWT_KEY or AUTHMW_SECRET_KEYS)",
        description="Print a random URL-safe secret, usable as an HS256/HS384 key or a session signing key.",
        formatter_class=_Formatter,
    )
    hs.add_argument("--bytes", type=_secret_bytes, default=48, help="random bytes in the secret (64 for HS512)")
    hs.set_defaults(handler=_cmd_keys_hs)

    pair_description = (
        "Write private.pem (mode 0600), public.pem and jwks.json (the public key as a JWK with kid, alg and "
        "use=sig) into DIR, then print the AUTHMW_* lines that use them. Existing files are kept unless --force. "
        'DIR also gets a .gitignore of "*" unless it has one, so that git never takes the private key.'
    )
    for kind, what in (("rsa", "an RSA (RS256)"), ("ec", "an EC (ES256/384/512)"), ("ed25519", "an Ed25519 (EdDSA)")):
        sub = key_commands.add_parser(
            kind, help=f"write {what} key pair and its JWKS", description=pair_description, formatter_class=_Formatter
        )
        sub.add_argument("--out", required=True, metavar="DIR", help="directory for the files (created if missing)")
        sub.add_argument("--kid", help="key id (default: the first 16 characters of the RFC 7638 thumbprint)")
        sub.add_argument("--force", action="store_true", help="replace existing files")
        if kind == "rsa":
            sub.add_argument("--bits", type=int, choices=(2048, 3072, 4096), default=3072, help="modulus size")
        if kind == "ec":
            sub.add_argument("--curve", choices=tuple(_CURVES), default="P-256", help="curve (P-256: ES256, …)")
        sub.set_defaults(handler=_cmd_keys_generate, kind=kind)

    jwks = key_commands.add_parser(
        "jwks",
        help="print a JWKS of PEM keys",
        description="Print a JWKS of the public halves of PEM keys (public keys, private keys or certificates).",
        formatter_class=_Formatter,
    )
    jwks.add_argument("pem", nargs="+", metavar="PEM", help="PEM file")
    jwks.add_argument(
        "--kid", action="append", help="key id, once per PEM file in order (default: RFC 7638 thumbprint prefix)"
    )
    jwks.add_argument(
        "--alg", choices=sorted(SUPPORTED_ALGORITHMS - {"HS256", "HS384", "HS512"}), help="alg of every key"
    )
    jwks.set_defaults(handler=_cmd_keys_jwks)


def _add_token_commands(commands: _Commands) -> None:
    token = commands.add_parser("token", help="mint an access token for testing", description="Access tokens.")
    token_commands = token.add_subparsers(title="token commands", dest="token_command", required=True, metavar="CMD")
    mint = token_commands.add_parser(
        "mint",
        help="print a signed access token",
        description=(
            "Print an access token signed as the middleware's token issuer would sign it: only the token, on "
            "stdout (warnings go to stderr). The JWT settings come from the AUTHMW_* environment (AUTHMW_JWT_KEY "
            "or AUTHMW_JWT_JWKS, AUTHMW_JWT_SIGNING_KEY, AUTHMW_JWT_ALGORITHMS, AUTHMW_JWT_ISSUER, "
            "AUTHMW_JWT_AUDIENCE, AUTHMW_ACCESS_TOKEN_TTL); --alg, --iss, --aud and --ttl override them. With "
            "--key or --key-file the environment is not read."
        ),
        formatter_class=_Formatter,
    )
    mint.add_argument("--sub", required=True, metavar="USER", help="the subject (user id)")
    mint.add_argument("--scope", action="append", metavar='"A B"', help="space-separated scopes (repeatable)")
    mint.add_argument(
        "--ttl", type=_positive_float, metavar="SECONDS", help="lifetime (default: AUTHMW_ACCESS_TOKEN_TTL or 300)"
    )
    mint.add_argument(
        "--claim",
        action="append",
        metavar="NAME=VALUE",
        help="an extra claim; VALUE is read as JSON when it parses (42, true, [1]), else as a string",
    )
    source = mint.add_mutually_exclusive_group()
    source.add_argument("--key", metavar="KEY", help="an HMAC secret or PEM private key (text)")
    source.add_argument(
        "--key-file", metavar="PATH", help="a file holding a PEM private key or an HMAC secret (read as is)"
    )
    mint.add_argument(
        "--alg",
        choices=sorted(SUPPORTED_ALGORITHMS),
        metavar="ALG",
        help="signing algorithm, e.g. HS256, RS256, ES256, EdDSA",
    )
    mint.add_argument("--iss", metavar="ISSUER", help="the iss claim")
    mint.add_argument("--aud", metavar="AUDIENCE", help="the aud claim")
    mint.add_argument("--kid", help="the kid header (default: the configured key's kid)")
    mint.add_argument(
        "--json", action="store_true", help="print the token with its header (as in the token) and claims as JSON"
    )
    mint.set_defaults(handler=_cmd_token_mint)


def _add_sessions_commands(commands: _Commands) -> None:
    sessions = commands.add_parser(
        "sessions", help="list or revoke a user's sessions in Redis", description="Server-side sessions in Redis."
    )
    session_commands = sessions.add_subparsers(
        title="session commands", dest="session_command", required=True, metavar="CMD"
    )
    listing = session_commands.add_parser(
        "list",
        help="list a user's sessions",
        description="List a user's live sessions: handle, created, last seen, expires, IP and user agent (UTC).",
        formatter_class=_Formatter,
    )
    listing.add_argument("user", metavar="USER", help="the user id")
    listing.add_argument("--json", action="store_true", help="JSON output (times in POSIX seconds)")
    _add_redis_options(listing)
    listing.set_defaults(handler=_cmd_sessions_list)

    revoke = session_commands.add_parser(
        "revoke",
        help="end one session",
        description="End one session of a user, named by its handle (from `authmw sessions list`).",
        formatter_class=_Formatter,
    )
    revoke.add_argument("user", metavar="USER", help="the user id")
    revoke.add_argument("handle", metavar="HANDLE", help="the session's handle")
    _add_redis_options(revoke)
    revoke.set_defaults(handler=_cmd_sessions_revoke)

    revoke_all = session_commands.add_parser(
        "revoke-all",
        help="log a user out everywhere",
        description=(
            "Log a user out everywhere: delete every session, revoke every refresh-token family, and refuse "
            "every access token issued before now."
        ),
        formatter_class=_Formatter,
    )
    revoke_all.add_argument("user", metavar="USER", help="the user id")
    _add_ttl_option(revoke_all)
    _add_redis_options(revoke_all)
    revoke_all.set_defaults(handler=_cmd_sessions_revoke_all)


def _add_tokens_revoke(token_store_commands: _Commands) -> None:
    revoke = token_store_commands.add_parser(
        "revoke",
        help="deny one access token",
        description=(
            "Put one access token on the middleware's jti denylist, which every process checks, until its exp "
            "plus the leeway (AUTHMW_JWT_LEEWAY); the user's other tokens and sessions stay. The token is verified "
            "first with the AUTHMW_JWT_* settings (keys, algorithms, issuer, audience), as the middleware has "
            "them; an expired one needs no revocation (exit 0). Give the token as TOKEN, or pipe it to stdin "
            "(no TOKEN, or -), which keeps it out of the shell's history; or name it by its claims with "
            "--jti, --sub and --exp (and --iss when the tokens have an issuer)."
        ),
        formatter_class=_Formatter,
    )
    named = revoke.add_mutually_exclusive_group()
    named.add_argument("token", nargs="?", metavar="TOKEN", help="the access token; - or none: read it from stdin")
    named.add_argument("--jti", metavar="JTI", help="the token's jti claim, instead of the token")
    revoke.add_argument("--sub", metavar="USER", help="with --jti: the token's sub claim")
    revoke.add_argument("--exp", type=_epoch, metavar="EPOCH", help="with --jti: the token's exp claim (seconds)")
    revoke.add_argument(
        "--iss", metavar="ISSUER", help="with --jti: the token's iss claim (default: AUTHMW_JWT_ISSUER, if one)"
    )
    _add_redis_options(revoke)
    revoke.set_defaults(handler=_cmd_tokens_revoke)


def _add_tokens_commands(commands: _Commands) -> None:
    tokens = commands.add_parser(
        "tokens",
        help="revoke an access token, or all of a user's tokens, in Redis",
        description="Refresh and access tokens in Redis.",
    )
    token_store_commands = tokens.add_subparsers(
        title="tokens commands", dest="tokens_command", required=True, metavar="CMD"
    )
    _add_tokens_revoke(token_store_commands)
    tokens_revoke_all = token_store_commands.add_parser(
        "revoke-all",
        help="revoke a user's refresh tokens and earlier access tokens",
        description=(
            "Revoke every refresh-token family of a user and refuse every access token issued before now; "
            "the user's sessions stay."
        ),
        formatter_class=_Formatter,
    )
    tokens_revoke_all.add_argument("user", metavar="USER", help="the user id")
    _add_ttl_option(tokens_revoke_all)
    _add_redis_options(tokens_revoke_all)
    tokens_revoke_all.set_defaults(handler=_cmd_tokens_revoke_all)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authmw", description=__doc__, formatter_class=_OverviewFormatter)
    parser.add_argument("--version", action="version", version=f"authmw {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    _add_keys_commands(commands)
    _add_token_commands(commands)
    _add_sessions_commands(commands)
    _add_tokens_commands(commands)
    return parser


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or an argparse error (already printed)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CLIError as exc:
        print(f"authmw: error: {exc.message}", file=sys.stderr)
        return exc.code
    except ConfigurationError as exc:
        print(f"authmw: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("authmw: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Run the `authmw` command; the exit code (0 done, 1 failed, 2 bad arguments or configuration, 141 stdout
    closed early)."""
    try:
        code = _run(argv)
        # Flushed here, not at exit: a reader that went away (`| head`) must be met where it can be handled.
        sys.stdout.flush()
    except BrokenPipeError:
        # The signal module docs' "Note on SIGPIPE": point stdout at devnull, so that the flush at exit does
        # not fail again with an "Exception ignored" message; what was left to print is dropped.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
