"""`JWTVerifier` on its own: one test per promise of SECURITY-BAR.md that bearer-token verification makes.

Every verification passes `now=NOW`, so nothing depends on the wall clock. Malformed tokens are built
segment by segment and still carry a valid HMAC over their exact signing input (see `tests/jwt_helpers.py`),
so each rejection below can only come from the check the test names.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm
from tests.jwt_helpers import (
    AUDIENCE,
    B64URL_ALPHABET,
    ISSUER,
    NOW,
    OTHER_SECRET,
    SECRET,
    JWKSServer,
    KeyMaterial,
    b64,
    claims,
    craft,
    flip_unused_bits,
    hs_signature,
    hs_token,
    hs_verifier,
    json_bytes,
    payload_with_spare_bits,
    public_jwk,
    public_pem,
    segment,
    self_signed_certificate,
    sign_input,
    sign_with,
)

import authmw.keys
from authmw.errors import ConfigurationError, InvalidToken, render_error
from authmw.keys import KeySet, VerificationKey
from authmw.principal import Principal
from authmw.tokens import JWTSettings, JWTVerifier

HS256 = {"alg": "HS256", "typ": "JWT"}


@pytest.fixture(scope="module")
def km() -> KeyMaterial:
    return KeyMaterial.generate()


@pytest.fixture(scope="module")
def hs() -> JWTVerifier:
    return hs_verifier()


@pytest.fixture(scope="module")
def rs(km: KeyMaterial) -> JWTVerifier:
    return JWTVerifier(JWTSettings(algorithms=["RS256"], keys=public_pem(km.rsa)))


def rejected(verifier: JWTVerifier, token: str, *, now: float = NOW) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        verifier.verify(token, now=now)
    return info.value


def accepted(verifier: JWTVerifier, token: str, *, now: float = NOW) -> Principal:
    principal = verifier.verify(token, now=now)
    assert isinstance(principal, Principal)
    return principal


def counting_hook(calls: list[str]) -> Callable[[Mapping[str, Any]], Principal]:
    def to_principal(claims: Mapping[str, Any]) -> Principal:
        calls.append(claims["sub"])
        return Principal(id=claims["sub"], source="jwt", expires_at=claims.get("exp"))

    return to_principal


def test_control_hand_crafted_tokens_verify(hs: JWTVerifier) -> None:
    """The helpers below build tokens that verify when nothing is wrong: rejections later are not accidents."""
    assert accepted(hs, craft()).id == "alice"
    assert accepted(hs, sign_input(segment(HS256), segment(payload_with_spare_bits()))).id == "alice"
    assert accepted(hs, hs_token()).id == "alice"


# ---------------------------------------------------------------- P2: algorithm allow-list


@pytest.mark.parametrize(
    "alg",
    ["hs256", "Hs256", "HS256 ", " HS256", "HS-256", "none", "None", "NONE", "noNE", "nOnE", "", "HS384", "RS256"],
)
def test_p2_alg_allow_list_is_exact_and_case_sensitive(hs: JWTVerifier, alg: str) -> None:
    # A valid HMAC-SHA256 signature: only the alg comparison can refuse these.
    rejected(hs, craft({"alg": alg, "typ": "JWT"}))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "noNE"])
def test_p2_none_with_empty_signature_rejected(hs: JWTVerifier, alg: str) -> None:
    unsigned = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims())}."
    rejected(hs, unsigned)
    rejected(hs, jwt.encode(claims(), None, algorithm="none"))


@pytest.mark.parametrize(
    "header", [{"typ": "JWT"}, {"alg": None}, {"alg": ["HS256"]}, {"alg": {"HS256": 1}}, {"alg": 1}]
)
def test_p2_missing_or_non_string_alg_rejected(hs: JWTVerifier, header: dict[str, Any]) -> None:
    rejected(hs, craft(header))


def test_p2_alg_not_in_configured_list_rejected() -> None:
    token = hs_token(alg="HS512")
    rejected(hs_verifier(algorithms=["HS256"]), token)
    rejected(hs_verifier(algorithms=["HS256", "HS384"]), token)
    accepted(hs_verifier(algorithms=["HS256", "HS512"]), token)  # control


@pytest.mark.parametrize("algorithms", [["none"], ["None"], ["hs256"], ["HS256", "none"], [], ["HS1"], ["RSA-OAEP"]])
def test_p2_none_and_unknown_algorithms_cannot_be_configured(algorithms: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=algorithms, keys=SECRET)


# ---------------------------------------------------------------- P3: one key, one algorithm


def _public_encodings(private: Any) -> dict[str, bytes]:
    public = private.public_key()
    encodings = {
        "pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk_json": json.dumps(public_jwk(private)).encode(),
        "jwk_json_pretty": b"\n  " + json.dumps(public_jwk(private), indent=2).encode(),
    }
    if hasattr(public, "key_size") and not hasattr(public, "curve"):  # RSA only
        encodings["pkcs1_pem"] = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        encodings["pkcs1_der"] = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    encodings["pem_leading_whitespace"] = b"\n\t " + encodings["pem"]
    encodings["pem_crlf"] = encodings["pem"].replace(b"\n", b"\r\n")
    return encodings


RSA_ENCODINGS = ["pem", "pkcs1_pem", "der", "pkcs1_der", "openssh", "jwk_json", "jwk_json_pretty", "pem_crlf"]


@pytest.mark.parametrize("encoding", RSA_ENCODINGS)
def test_p3_rs256_route_rejects_hs256_signed_with_public_key(km: KeyMaterial, rs: JWTVerifier, encoding: str) -> None:
    secret = _public_encodings(km.rsa)[encoding]
    forged = craft(HS256, claims(), secret=secret)
    rejected(rs, forged)
    # Even when the public key came from a JWKS with a kid the attacker names.
    jwks_verifier = JWTVerifier(
        JWTSettings(algorithms=["RS256"], keys=KeySet.from_jwks({"keys": [public_jwk(km.rsa, kid="k1")]}))
    )
    rejected(jwks_verifier, craft({**HS256, "kid": "k1"}, claims(), secret=secret))
    rejected(jwks_verifier, craft({**HS256, "kid": "k1"}, claims(), secret=json.dumps(public_jwk(km.rsa)).encode()))


TEXT_ENCODINGS = ["pem", "openssh", "jwk_json", "jwk_json_pretty", "pem_leading_whitespace", "pem_crlf"]
HMAC_CONFUSION_CASES = [
    (kind, encoding)
    for kind in ("rsa", "p256", "p384", "ed25519")
    for encoding in [*TEXT_ENCODINGS, "der"] + (["pkcs1_pem", "pkcs1_der"] if kind == "rsa" else [])
]


@pytest.mark.parametrize("kind,encoding", HMAC_CONFUSION_CASES)
def test_p3_asymmetric_public_key_as_hmac_secret_raises(km: KeyMaterial, kind: str, encoding: str) -> None:
    material = _public_encodings(getattr(km, kind))[encoding]
    values: list[str | bytes] = [material]
    if encoding in TEXT_ENCODINGS or encoding == "pkcs1_pem":
        values.append(material.decode())
    for value in values:
        with pytest.raises(ConfigurationError):
            JWTSettings(algorithms=["HS256"], keys=value)
        with pytest.raises(ConfigurationError):
            VerificationKey.hmac(value)


@pytest.mark.parametrize("encoding", ["der_certificate", "pem_after_text", "jwk_with_bom", "jwk_array"])
def test_p3_other_public_key_encodings_as_hmac_secret_raise(km: KeyMaterial, encoding: str) -> None:
    certificate = self_signed_certificate(km.rsa)
    material = {
        "der_certificate": certificate.public_bytes(serialization.Encoding.DER),
        "pem_after_text": b"subject=CN = authmw test\nissuer=CN = authmw test\n"
        + certificate.public_bytes(serialization.Encoding.PEM),
        "jwk_with_bom": ("\ufeff" + json.dumps(public_jwk(km.rsa))).encode(),
        "jwk_array": json.dumps([public_jwk(km.rsa)]).encode(),
    }[encoding]
    with pytest.raises(ConfigurationError):
        VerificationKey.hmac(material)


@pytest.mark.parametrize("algorithms", [["HS256", "RS256"], ["RS256", "HS256"], ["HS512", "ES256"], ["EdDSA", "HS384"]])
def test_p3_mixing_hmac_and_asymmetric_algorithms_raises(km: KeyMaterial, algorithms: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=algorithms, keys=SECRET)
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=algorithms, keys=public_pem(km.rsa))


def test_p3_key_whose_type_matches_no_configured_algorithm_raises(km: KeyMaterial) -> None:
    for algorithms, key in (
        (["HS256"], public_pem(km.rsa)),
        (["RS256"], SECRET),
        (["RS256"], public_pem(km.p256)),
        (["ES384"], public_pem(km.p256)),
        (["ES256"], public_pem(km.ed25519)),
        (["EdDSA"], public_pem(km.rsa)),
    ):
        with pytest.raises(ConfigurationError):
            JWTSettings(algorithms=algorithms, keys=key)


def test_p3_es256_key_rejects_rs256_token(km: KeyMaterial) -> None:
    verifier = JWTVerifier(JWTSettings(algorithms=["ES256", "RS256"], keys=public_pem(km.p256)))
    accepted(verifier, jwt.encode(claims(), km.p256, algorithm="ES256"))  # control
    rejected(verifier, jwt.encode(claims(), km.rsa, algorithm="RS256"))


def test_p3_es384_token_against_p256_key_rejected(km: KeyMaterial) -> None:
    verifier = JWTVerifier(JWTSettings(algorithms=["ES256", "ES384"], keys=public_pem(km.p256)))
    # Signed by the right (P-256) key with SHA-384: a curve-unaware verifier would accept it.
    rejected(verifier, sign_with({"alg": "ES384", "typ": "JWT"}, claims(), km.p256, "ES384"))
    rejected(verifier, jwt.encode(claims(), km.p384, algorithm="ES384"))
    accepted(verifier, jwt.encode(claims(), km.p256, algorithm="ES256"))  # control


def test_p3_rsa_key_never_verifies_hmac_even_when_hs_algorithms_slip_in(km: KeyMaterial) -> None:
    key = VerificationKey.from_any(public_pem(km.rsa))
    assert not key.algorithms & {"HS256", "HS384", "HS512"}
    signing_input = f"{segment(HS256)}.{segment(claims())}".encode()
    signature = hmac.digest(public_pem(km.rsa), signing_input, "sha256")
    assert key.verify("HS256", signing_input, signature) is False


# ---------------------------------------------------------------- P4: trust anchors only from configuration


def test_p4_embedded_jwk_header_never_used(km: KeyMaterial, rs: JWTVerifier) -> None:
    attacker_jwk = public_jwk(km.rsa_other, kid="attacker")
    header = {"alg": "RS256", "typ": "JWT", "jwk": attacker_jwk}
    rejected(rs, jwt.encode(claims(), km.rsa_other, algorithm="RS256", headers={"jwk": attacker_jwk}))
    rejected(rs, sign_with({**header, "kid": "attacker"}, claims(), km.rsa_other, "RS256"))
    several = JWTVerifier(
        JWTSettings(algorithms=["RS256"], keys=KeySet.from_keys({"legit": km.rsa.public_key(), "also": km.rsa}))
    )
    rejected(several, sign_with({**header, "kid": "attacker"}, claims(), km.rsa_other, "RS256"))
    # HMAC flavour (CVE-2018-0114 style): an oct JWK carrying the attacker's secret.
    oct_jwk = {"kty": "oct", "k": b64(OTHER_SECRET)}
    rejected(hs_verifier(), craft({**HS256, "jwk": oct_jwk}, claims(), secret=OTHER_SECRET))


def test_p4_jku_and_x5u_never_fetched(km: KeyMaterial, rs: JWTVerifier) -> None:
    attacker = JWKSServer()
    try:
        attacker.serve_jwks(public_jwk(km.rsa_other, kid="attacker"))
        headers = {"jku": attacker.url, "x5u": attacker.url, "kid": "attacker"}
        rejected(rs, jwt.encode(claims(), km.rsa_other, algorithm="RS256", headers=headers))
        several = JWTVerifier(JWTSettings(algorithms=["RS256"], keys=KeySet.from_keys({"legit": km.rsa})))
        rejected(several, jwt.encode(claims(), km.rsa_other, algorithm="RS256", headers=headers))
        # A token signed by the configured key with those headers verifies: they are ignored, not fetched.
        accepted(
            rs, jwt.encode(claims(), km.rsa, algorithm="RS256", headers={"jku": attacker.url, "x5u": attacker.url})
        )
        assert attacker.hits == 0
    finally:
        attacker.stop()


def test_p4_x5c_header_never_used(km: KeyMaterial, rs: JWTVerifier) -> None:
    certificate = self_signed_certificate(km.rsa_other)
    x5c = [b64(certificate.public_bytes(serialization.Encoding.DER))]
    rejected(rs, jwt.encode(claims(), km.rsa_other, algorithm="RS256", headers={"x5c": x5c}))


KID_INJECTIONS = [
    "../../../../../../dev/null",
    "/dev/null",
    "..\\..\\windows\\win.ini",
    "' OR '1'='1",
    "x' UNION SELECT 'secret' --",
    "*)(uid=*))(|(uid=*",
    "k1/../k2",
    "K1",
    " k1",
    "k1 ",
    "k1\x00",
    "",
    "*",
]


@pytest.mark.parametrize("kid", KID_INJECTIONS)
def test_p4_kid_injection_is_just_an_unknown_kid(kid: str) -> None:
    verifier = hs_verifier(keys=KeySet.from_keys({"k1": SECRET, "k2": OTHER_SECRET}))
    accepted(verifier, craft({**HS256, "kid": "k1"}))  # control
    for secret in (SECRET, OTHER_SECRET, b"", b"\n"):
        header = {**HS256, "kid": kid}
        signing_input = f"{segment(header)}.{segment(claims())}"
        rejected(verifier, f"{signing_input}.{hs_signature(signing_input, secret)}")


def test_p4_kid_dev_null_with_empty_key_rejected_on_single_key() -> None:
    header = {**HS256, "kid": "../../../../dev/null"}
    signing_input = f"{segment(header)}.{segment(claims())}"
    rejected(hs_verifier(), f"{signing_input}.{hs_signature(signing_input, b'')}")


@pytest.mark.parametrize("kid", [1, 0, True, ["k1"], {"k1": 1}, 1.5])
def test_p4_kid_must_be_a_string(kid: Any) -> None:
    rejected(hs_verifier(keys=KeySet.from_keys({"k1": SECRET, "k2": OTHER_SECRET})), craft({**HS256, "kid": kid}))


def test_p4_several_keys_require_kid_and_reject_unknown_kid() -> None:
    verifier = hs_verifier(keys=KeySet.from_keys({"k1": SECRET, "k2": OTHER_SECRET}))
    accepted(verifier, craft({**HS256, "kid": "k1"}))
    accepted(verifier, craft({**HS256, "kid": "k2"}, secret=OTHER_SECRET))
    rejected(verifier, craft(HS256))  # kid required
    rejected(verifier, craft({**HS256, "kid": "k3"}))  # unknown
    rejected(verifier, craft({**HS256, "kid": "k1"}, secret=OTHER_SECRET))  # kid names the other key


def test_p4_single_key_without_kid_serves_tokens_with_or_without_kid() -> None:
    verifier = hs_verifier()
    accepted(verifier, craft(HS256))
    accepted(verifier, craft({**HS256, "kid": "whatever"}))
    rejected(verifier, craft({**HS256, "kid": "whatever"}, secret=OTHER_SECRET))


def test_p4_single_key_with_kid_serves_tokens_without_kid_but_not_other_kids() -> None:
    verifier = hs_verifier(keys=KeySet.from_key(SECRET, kid="k1"))
    accepted(verifier, craft({**HS256, "kid": "k1"}))
    accepted(verifier, craft(HS256))
    rejected(verifier, craft({**HS256, "kid": "k2"}))


# ---------------------------------------------------------------- P5: required claims


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_p5_exp_iat_sub_required_by_default(hs: JWTVerifier, claim: str) -> None:
    rejected(hs, craft(HS256, claims(**{claim: None})))


def test_p5_iss_and_aud_required_when_configured() -> None:
    verifier = hs_verifier(issuer=ISSUER, audience=AUDIENCE)
    accepted(verifier, craft(HS256, claims(iss=ISSUER, aud=AUDIENCE)))  # control
    rejected(verifier, craft(HS256, claims(aud=AUDIENCE)))
    rejected(verifier, craft(HS256, claims(iss=ISSUER)))
    rejected(verifier, craft(HS256, claims(iss=None, aud=None)))


def test_p5_required_claims_are_configurable_and_enforced() -> None:
    verifier = hs_verifier(required_claims=("exp", "iat", "sub", "jti", "nbf"))
    accepted(verifier, craft(HS256, claims(nbf=NOW)))
    rejected(verifier, craft(HS256, claims(jti=None, nbf=NOW)))
    rejected(verifier, craft(HS256, claims()))  # no nbf


def test_p5_iss_listed_in_required_claims_is_enforced_without_issuer_config() -> None:
    verifier = hs_verifier(required_claims=("exp", "iat", "sub", "iss"))
    rejected(verifier, craft(HS256, claims()))


@pytest.mark.parametrize("required", [("exp", "role"), ("exp", "iat", "sub", "EXP")])
def test_p5_unknown_required_claim_raises(required: tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError):
        hs_verifier(required_claims=required)


@pytest.mark.parametrize(
    "sub",
    [
        "",
        123,
        0,
        None,
        True,
        ["alice"],
        {"id": "alice"},
        1.5,
        "ali\x00ce",
        "alice\n",
        "\talice",
        "a\rb",
        "a\x7f",
        "a\x85",
    ],
)
def test_p5_sub_must_be_nonempty_string_without_control_chars(hs: JWTVerifier, sub: Any) -> None:
    payload = claims()
    payload["sub"] = sub
    rejected(hs, craft(HS256, payload))


def test_p5_sub_with_lone_surrogate_rejected(hs: JWTVerifier) -> None:
    payload = json_bytes(claims()).replace(b'"alice"', b'"ali\\ud800ce"')
    rejected(hs, craft(HS256, payload))


# ---------------------------------------------------------------- P6: exact iss / aud


@pytest.mark.parametrize(
    "iss",
    [
        "h",  # CVE-2024-53861: PyJWT 2.10.0 did `iss in "https://issuer.example"`
        "https",
        "issuer",
        "https://issuer.exampl",
        "https://issuer.example.evil",
        "https://issuer.example/",
        "https://issuer.example/x",
        "HTTPS://ISSUER.EXAMPLE",
        "https://Issuer.example",
        " https://issuer.example",
        "https://issuer.example ",
        "",
        ["https://issuer.example"],
        {"iss": "https://issuer.example"},
        1,
    ],
)
def test_p6_issuer_exact_match_cve_2024_53861(iss: Any) -> None:
    verifier = hs_verifier(issuer=ISSUER)
    accepted(verifier, craft(HS256, claims(iss=ISSUER)))  # control
    rejected(verifier, craft(HS256, claims(iss=iss)))


def test_p6_issuer_list_configuration_matches_each_exactly() -> None:
    verifier = hs_verifier(issuer=[ISSUER, "https://other.example"])
    accepted(verifier, craft(HS256, claims(iss=ISSUER)))
    accepted(verifier, craft(HS256, claims(iss="https://other.example")))
    rejected(verifier, craft(HS256, claims(iss="https://other")))


@pytest.mark.parametrize(
    "aud",
    [
        "authmw",
        "authmw-demo/",
        "AUTHMW-DEMO",
        "authmw-demo-x",
        "xauthmw-demo",
        "a",
        "",
        [],
        ["other"],
        ["authmw"],
        [AUDIENCE, 1],
        [[AUDIENCE]],
        {"aud": AUDIENCE},
        1,
        True,
    ],
)
def test_p6_audience_exact_match(aud: Any) -> None:
    verifier = hs_verifier(audience=AUDIENCE)
    rejected(verifier, craft(HS256, claims(aud=aud)))


def test_p6_audience_list_membership_accepted() -> None:
    verifier = hs_verifier(audience=AUDIENCE)
    accepted(verifier, craft(HS256, claims(aud=AUDIENCE)))
    accepted(verifier, craft(HS256, claims(aud=["other", AUDIENCE])))
    several = hs_verifier(audience=["api-a", AUDIENCE])
    accepted(several, craft(HS256, claims(aud="api-a")))
    accepted(several, craft(HS256, claims(aud=["x", AUDIENCE])))
    rejected(several, craft(HS256, claims(aud=["x", "api"])))


@pytest.mark.parametrize("aud", [AUDIENCE, [AUDIENCE], "anything"])
def test_p6_aud_present_without_configured_audience_rejected(hs: JWTVerifier, aud: Any) -> None:
    rejected(hs, craft(HS256, claims(aud=aud)))


# ---------------------------------------------------------------- P7: bounded time validation


def test_p7_expired_rejected(hs: JWTVerifier) -> None:
    rejected(hs, craft(HS256, claims(iat=NOW - 3600, exp=NOW - 600)))
    rejected(hs, craft(HS256, claims(iat=NOW - 3600, exp=NOW - 60)))


def test_p7_default_leeway_30s_honoured_both_sides() -> None:
    verifier = hs_verifier()
    assert verifier.settings.leeway == 30
    # exp in the past, within and beyond the leeway
    accepted(verifier, craft(HS256, claims(iat=NOW - 100, exp=NOW - 29)))
    rejected(verifier, craft(HS256, claims(iat=NOW - 100, exp=NOW - 31)))
    # iat and nbf in the future, within and beyond the leeway
    accepted(verifier, craft(HS256, claims(iat=NOW + 29, exp=NOW + 300)))
    rejected(verifier, craft(HS256, claims(iat=NOW + 31, exp=NOW + 300)))
    accepted(verifier, craft(HS256, claims(nbf=NOW + 29)))
    rejected(verifier, craft(HS256, claims(nbf=NOW + 31)))


def test_p7_zero_leeway_is_strict() -> None:
    verifier = hs_verifier(leeway=0)
    rejected(verifier, craft(HS256, claims(iat=NOW - 100, exp=NOW)))
    rejected(verifier, craft(HS256, claims(iat=NOW + 1)))
    rejected(verifier, craft(HS256, claims(nbf=NOW + 1)))
    accepted(verifier, craft(HS256, claims(iat=NOW - 100, exp=NOW + 1, nbf=NOW)))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_p7_nbf_or_iat_in_the_future_rejected(hs: JWTVerifier, claim: str) -> None:
    rejected(hs, craft(HS256, claims(**{claim: NOW + 3600}, exp=NOW + 7200)))


@pytest.mark.parametrize("leeway", [120.5, 121, 3600, float("inf"), -1, float("nan")])
def test_p7_leeway_above_two_minutes_raises(leeway: float) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=["HS256"], keys=SECRET, leeway=leeway)


def test_p7_leeway_of_two_minutes_allowed() -> None:
    JWTSettings(algorithms=["HS256"], keys=SECRET, leeway=120)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["1800000300", "soon", True, False, [NOW], {"t": NOW}, ""])
def test_p7_numericdate_must_be_a_json_number(hs: JWTVerifier, claim: str, value: Any) -> None:
    payload = claims()
    payload[claim] = value
    rejected(hs, craft(HS256, payload))


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"1E999"])
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_p7_infinite_numericdate_rejected(hs: JWTVerifier, claim: str, literal: bytes) -> None:
    # json.loads turns 1e400 into float("inf") without calling parse_constant.
    payload = claims()
    payload[claim] = 424242424242
    raw = json_bytes(payload).replace(b"424242424242", literal)
    assert math.isinf(json.loads(raw)[claim])
    rejected(hs, craft(HS256, raw))


def test_p7_huge_finite_exp_rejected(hs: JWTVerifier) -> None:
    rejected(hs, craft(HS256, claims(exp=1e308)))
    rejected(hs, craft(HS256, claims(exp=10**400)))


# ---------------------------------------------------------------- P8: maximum lifetime


def test_p8_lifetime_above_maximum_rejected() -> None:
    verifier = hs_verifier()
    accepted(verifier, craft(HS256, claims(iat=NOW, exp=NOW + 24 * 3600)))
    rejected(verifier, craft(HS256, claims(iat=NOW, exp=NOW + 24 * 3600 + 1)))
    short = hs_verifier(max_lifetime=600)
    accepted(short, craft(HS256, claims(iat=NOW - 100, exp=NOW + 500)))
    rejected(short, craft(HS256, claims(iat=NOW - 100, exp=NOW + 501)))


def test_p8_lifetime_capped_even_without_iat() -> None:
    verifier = hs_verifier(required_claims=("exp", "sub"), max_lifetime=600)
    accepted(verifier, craft(HS256, claims(iat=None, exp=NOW + 600)))
    rejected(verifier, craft(HS256, claims(iat=None, exp=NOW + 601)))


@pytest.mark.parametrize("max_lifetime", [0, -1])
def test_p8_non_positive_max_lifetime_raises(max_lifetime: float) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=["HS256"], keys=SECRET, max_lifetime=max_lifetime)


# ---------------------------------------------------------------- P9: mutually exclusive token kinds


@pytest.mark.parametrize(
    "typ",
    [
        "refresh+jwt",
        "id_token",
        "secevent+jwt",
        "application/secevent+jwt",
        "logout+jwt",
        "dpop+jwt",
        "JOSE",
        "",
        1,
        [],
    ],
)
def test_p9_non_access_token_typ_rejected(hs: JWTVerifier, typ: Any) -> None:
    rejected(hs, craft({"alg": "HS256", "typ": typ}))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+jwt", "AT+JWT", None])
def test_p9_access_token_typ_accepted(hs: JWTVerifier, typ: str | None) -> None:
    header = {"alg": "HS256"} if typ is None else {"alg": "HS256", "typ": typ}
    accepted(hs, craft(header))


@pytest.mark.parametrize(
    "extra",
    [
        {"token_use": "refresh"},
        {"token_use": "id"},
        {"token_type": "refresh"},
        {"token_type": "refresh_token"},
        {"events": {"https://schemas.openid.net/event/backchannel-logout": {}}},
        {"nonce": "n-0S6_WzA2Mj"},
        {"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"},
    ],
)
def test_p9_refresh_id_token_and_set_claims_rejected(hs: JWTVerifier, extra: dict[str, Any]) -> None:
    rejected(hs, craft(HS256, claims(**extra)))


def test_p9_token_type_refresh_rejected_even_with_token_use_access(hs: JWTVerifier) -> None:
    rejected(hs, craft(HS256, claims(token_use="access", token_type="refresh")))


def test_p9_access_markers_accepted(hs: JWTVerifier) -> None:
    accepted(hs, craft(HS256, claims(token_use="access")))
    accepted(hs, craft(HS256, claims(token_type="access_token")))


# ---------------------------------------------------------------- P10: crit and other extensions


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"]},
        {"crit": []},
        {"crit": "b64"},
        {"crit": ["b64"], "b64": False},
        {"b64": False},
        {"b64": True},
        {"zip": "DEF"},
        {"cty": "JWT"},
        {"cty": "jwt"},
        {"cty": "application/jwt"},
        {"cty": 1},
        {"enc": "A256GCM"},
    ],
)
def test_p10_crit_b64_zip_and_nested_jwt_rejected(hs: JWTVerifier, extra: dict[str, Any]) -> None:
    rejected(hs, craft({**HS256, **extra}))


def test_p10_b64_false_unencoded_payload_rejected(hs: JWTVerifier) -> None:
    # RFC 7797: the signature covers the raw payload; the segment is the payload itself.
    header = segment({**HS256, "b64": False, "crit": ["b64"]})
    payload = json.dumps(claims(), separators=(",", ":"))
    signature = hs_signature(f"{header}.{payload}")
    rejected(hs, f"{header}.{payload}.{signature}")
    rejected(hs, f"{header}..{signature}")


# RFC 7515 §4.1: the registered header parameters and the JSON type each must have.
HEADER_STRINGS = ("alg", "jku", "kid", "x5u", "x5t", "x5t#S256", "typ", "cty")
HEADER_STRING_ARRAYS = ("x5c", "crit")
REGISTERED_HEADERS = (*HEADER_STRINGS, *HEADER_STRING_ARRAYS, "jwk")
#: one key without a kid: a token naming any kid string is served by it, so only a type check can refuse these
TYPED_HEADERS_VERIFIER = hs_verifier(cache_size=0)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def of_its_type(name: str, value: Any) -> bool:
    if name in HEADER_STRING_ARRAYS:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, dict) if name == "jwk" else isinstance(value, str)


def typed_header(name: str, value: Any) -> dict[str, Any]:
    return {**HS256, name: value}  # alg and typ are replaced when they are the parameter tested


def refusal_for_its_value(name: str, value: Any) -> str | None:
    """The reason a value of the right type is still refused for (crit is never supported, alg and typ must be
    allowed, cty must not nest), or None: the others are never read."""
    if name == "alg":
        return None if value == "HS256" else "alg_not_allowed"
    if name == "typ":
        return None if value.lower() in ("jwt", "at+jwt", "application/jwt", "application/at+jwt") else "bad_typ"
    if name == "cty":
        return "nested" if value.lower() in ("jwt", "application/jwt") else None
    return "crit" if name == "crit" else None


@pytest.mark.parametrize("name", REGISTERED_HEADERS)
def test_p10_registered_header_parameter_null_rejected(name: str) -> None:
    # Found by an attack run: "kid": null, signed with the configured key, was served by the default key.
    token = craft(typed_header(name, None))
    for _ in range(2):  # a refused header is never memoized as a good one
        error = rejected(TYPED_HEADERS_VERIFIER, token)
        assert (error.code, error.reason) == ("invalid_token", f"bad_{name}")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(REGISTERED_HEADERS).flatmap(
        lambda n: st.tuples(st.just(n), any_json.filter(lambda v: not of_its_type(n, v)))
    )
)
def test_p10_registered_header_parameter_of_the_wrong_type_rejected(case: tuple[str, Any]) -> None:
    """Null, numbers, booleans, objects, arrays (of non-strings, for the array parameters): all invalid_token."""
    name, value = case
    token = craft(typed_header(name, value))
    for _ in range(2):
        error = rejected(TYPED_HEADERS_VERIFIER, token)
        assert (error.code, error.reason) == ("invalid_token", f"bad_{name}")
    assert '"' not in error.description


strings = st.text(max_size=12) | st.sampled_from(["HS256", "JWT", "at+jwt", "AT+JWT", "jwt", "application/jwt", ""])
typed_values = {
    **{name: strings for name in HEADER_STRINGS},
    **{name: st.lists(st.text(max_size=8), max_size=3) for name in HEADER_STRING_ARRAYS},
    "jwk": st.dictionaries(st.text(max_size=4), any_json, max_size=3),
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REGISTERED_HEADERS).flatmap(lambda n: st.tuples(st.just(n), typed_values[n])))
def test_p10_registered_header_parameter_of_its_type_is_not_refused_for_its_type(case: tuple[str, Any]) -> None:
    name, value = case
    token = craft(typed_header(name, value))
    expected = refusal_for_its_value(name, value)
    if expected is None:
        assert accepted(TYPED_HEADERS_VERIFIER, token).id == "alice"
    else:
        assert rejected(TYPED_HEADERS_VERIFIER, token).reason == expected


# ---------------------------------------------------------------- P11: JWS compact serialization only


def test_p11_jwe_five_segments_rejected(hs: JWTVerifier) -> None:
    header = segment({"alg": "dir", "enc": "A256GCM"})
    rejected(hs, f"{header}..{b64(b'iv-iv-iv-iv')}.{b64(b'ciphertext')}.{b64(b'tag-tag-tag-tag')}")
    rejected(hs, f"{craft()}.{b64(b'x')}.{b64(b'y')}")


def test_p11_json_serialization_rejected(hs: JWTVerifier) -> None:
    header_b64, payload_b64, signature_b64 = craft().split(".")
    flattened = {"payload": payload_b64, "protected": header_b64, "signature": signature_b64}
    general = {"payload": payload_b64, "signatures": [{"protected": header_b64, "signature": signature_b64}]}
    for document in (flattened, general):
        rejected(hs, json.dumps(document))
        rejected(hs, json.dumps(document, separators=(",", ":")))
        rejected(hs, b64(json_bytes(document)))


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("padding", ["=", "==", "%3D"])
def test_p11_padding_on_any_segment_rejected(hs: JWTVerifier, position: int, padding: str) -> None:
    parts = craft().split(".")
    parts[position] += padding
    if position < 2:  # re-sign so only the syntax check can object
        parts[2] = hs_signature(f"{parts[0]}.{parts[1]}")
    rejected(hs, ".".join(parts))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: " " + t,
        lambda t: t + " ",
        lambda t: t + "\n",
        lambda t: "\t" + t,
        lambda t: t.replace(".", " .", 1),
        lambda t: t.replace(".", ".\n", 1),
        lambda t: t[:10] + " " + t[10:],
        lambda t: t[:10] + "\u00a0" + t[10:],
        lambda t: "Bearer " + t,
    ],
)
def test_p11_whitespace_rejected(hs: JWTVerifier, mangle: Callable[[str], str]) -> None:
    rejected(hs, mangle(craft()))


def test_p11_non_canonical_base64url_rejected(hs: JWTVerifier) -> None:
    header_b64, payload_b64, signature_b64 = craft(HS256, payload_with_spare_bits()).split(".")
    # Signature: same bytes, different string; the HMAC would match.
    rejected(hs, f"{header_b64}.{payload_b64}.{flip_unused_bits(signature_b64)}")
    # Payload: same claims, different string, re-signed over the non-canonical text.
    rejected(hs, sign_input(header_b64, flip_unused_bits(payload_b64)))
    # Header: pick one with spare bits.
    for extra in range(4):
        header = segment({**HS256, "x": "y" * extra})
        if len(header) % 4 in (2, 3):
            rejected(hs, sign_input(flip_unused_bits(header), payload_b64))
            break
    else:
        raise AssertionError("no header with spare bits")


def test_p11_standard_base64_alphabet_rejected(hs: JWTVerifier) -> None:
    for n in range(200):
        payload_b64 = segment(claims(pad="?>" * n))
        if "-" in payload_b64 or "_" in payload_b64:
            break
    standard = payload_b64.replace("-", "+").replace("_", "/")
    rejected(hs, sign_input(segment(HS256), standard))


@pytest.mark.parametrize(
    "shape",
    [
        lambda h, p, s: f"{h}.{p}",
        lambda h, p, s: f"{h}.{p}.{s}.{s}",
        lambda h, p, s: f"{h}.{p}.",
        lambda h, p, s: f"{h}..{s}",
        lambda h, p, s: f".{p}.{s}",
        lambda h, p, s: "..",
        lambda h, p, s: "",
        lambda h, p, s: ".",
        lambda h, p, s: f"{h}.{p}.{s}.",
        lambda h, p, s: f".{h}.{p}.{s}",
        lambda h, p, s: f"{h}.{p}..{s}",
        lambda h, p, s: f"{h}.{p}.{s[:-1]}\uff41",  # fullwidth 'a'
        lambda h, p, s: f"{h}.{p}.{s[:-1]}\u0663",  # Arabic-Indic digit three
    ],
)
def test_p11_wrong_segment_count_or_empty_signature_rejected(hs: JWTVerifier, shape: Callable[..., str]) -> None:
    rejected(hs, shape(*craft().split(".")))


# ---------------------------------------------------------------- P12: one JSON


def test_p12_duplicate_json_keys_rejected(hs: JWTVerifier) -> None:
    sub_twice = b'{"sub":"alice","sub":"admin","iat":%d,"exp":%d}' % (NOW, NOW + 300)
    rejected(hs, craft(HS256, sub_twice))
    nested = b'{"sub":"alice","iat":%d,"exp":%d,"x":{"a":1,"a":2}}' % (NOW, NOW + 300)
    rejected(hs, craft(HS256, nested))
    exp_twice = b'{"sub":"alice","iat":%d,"exp":%d,"exp":%d}' % (NOW, NOW - 1000, NOW + 300)
    rejected(hs, craft(HS256, exp_twice))


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"none","alg":"HS256","typ":"JWT"}',
        b'{"alg":"HS256","alg":"HS256"}',
        b'{"alg":"HS256","typ":"x","typ":"JWT"}',
    ],
)
def test_p12_duplicate_header_members_rejected(hs: JWTVerifier, header: bytes) -> None:
    rejected(hs, craft(header, claims()))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "latin-1-only"])
@pytest.mark.parametrize("part", ["header", "payload"])
def test_p12_non_utf8_or_bom_json_rejected(hs: JWTVerifier, encoding: str, part: str) -> None:
    document = HS256 if part == "header" else claims(name="Zoë")
    text = json.dumps(document, ensure_ascii=False)
    raw = text.encode("latin-1") if encoding == "latin-1-only" else text.encode(encoding)
    if encoding == "latin-1-only" and part == "header":
        raw = json.dumps({**HS256, "x": "é"}, ensure_ascii=False).encode("latin-1")
    token = craft(raw, claims()) if part == "header" else craft(HS256, raw)
    rejected(hs, token)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("claim", ["exp", "x"])
def test_p12_nan_and_infinity_rejected(hs: JWTVerifier, constant: bytes, claim: str) -> None:
    payload = claims(x=0)
    payload[claim] = 424242424242
    rejected(hs, craft(HS256, json_bytes(payload).replace(b"424242424242", constant)))


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
@pytest.mark.parametrize("part", ["header", "payload"])
def test_p12_deep_nesting_rejected(hs: JWTVerifier, opener: str, closer: str, part: str) -> None:
    deep = (opener * 50 + "1" + closer * 50).encode()
    if part == "payload":
        rejected(hs, craft(HS256, json_bytes(claims(x=0)).replace(b'"x":0', b'"x":' + deep)))
    else:
        rejected(hs, craft(json_bytes({**HS256, "x": 0}).replace(b'"x":0', b'"x":' + deep)))


def test_p12_recursion_bomb_rejected(hs: JWTVerifier) -> None:
    bomb = b"[" * 5000 + b"]" * 5000  # deeper than the interpreter's recursion limit
    rejected(hs, craft(HS256, json_bytes(claims(x=0)).replace(b'"x":0', b'"x":' + bomb)))
    rejected(hs, craft(HS256, bomb))


def test_p12_moderate_nesting_accepted(hs: JWTVerifier) -> None:
    accepted(hs, craft(HS256, claims(x={"a": {"b": [1, [2, {"c": 3}]]}})))


@pytest.mark.parametrize(
    "document", [b"[]", b'["sub","alice"]', b'"alice"', b"1", b"null", b"true", b"", b"{", b'{"sub":"alice"} {}']
)
@pytest.mark.parametrize("part", ["header", "payload"])
def test_p12_non_object_json_rejected(hs: JWTVerifier, document: bytes, part: str) -> None:
    rejected(hs, craft(document, claims()) if part == "header" else craft(HS256, document))


def test_p12_invalid_utf8_rejected(hs: JWTVerifier) -> None:
    rejected(hs, craft(HS256, json_bytes(claims(x="ab")).replace(b"ab", b"a\xffb")))
    rejected(hs, craft(HS256, json_bytes(claims(x="ab")).replace(b"ab", b"\xed\xa0\x80")))  # CESU surrogate


# ---------------------------------------------------------------- P13: size limit before parsing


def _token_of_length(target: int) -> str:
    """A valid token as close to `target` characters as possible without exceeding it."""
    best = ""
    for n in range(target):
        token = craft(HS256, claims(pad="x" * n))
        if len(token) > target:
            break
        best = token
    return best


def test_p13_token_over_8_kib_rejected_before_parsing(hs: JWTVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hs.settings.max_token_bytes == 8192
    fits = _token_of_length(8192)
    assert 8186 <= len(fits) <= 8192
    accepted(hs, fits)
    too_big = craft(HS256, claims(pad="x" * (len(fits) * 3 // 4)))
    assert len(too_big) > 8192

    def no_parsing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the token was decoded before the size check")

    monkeypatch.setattr(json, "loads", no_parsing)
    assert rejected(hs, too_big).reason == "token_too_large"
    assert rejected(hs, "A" * 10_000_000).reason == "token_too_large"
    assert rejected(hs, ("A" * 4000 + ".") * 3).reason == "token_too_large"


def test_p13_max_token_bytes_configurable() -> None:
    verifier = hs_verifier(max_token_bytes=100)
    token = craft()
    assert len(token) > 100
    assert rejected(verifier, token).reason == "token_too_large"


@pytest.mark.parametrize("size", [0, -1])
def test_p13_non_positive_max_token_bytes_raises(size: int) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=["HS256"], keys=SECRET, max_token_bytes=size)


# ---------------------------------------------------------------- P1: fail closed, only InvalidToken


FUZZ_VERIFIER = hs_verifier(cache_size=0)
VALID_TOKEN = craft()
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
)
claim_names = st.sampled_from(
    ["sub", "exp", "iat", "nbf", "iss", "aud", "jti", "scope", "scp", "scopes", "auth_time", "token_use", "token_type"]
) | st.text(max_size=6)
header_names = st.sampled_from(
    ["typ", "kid", "crit", "cty", "b64", "zip", "jku", "jwk", "x5c", "enc", "alg"]
) | st.text(max_size=4)
b64ish = st.text(alphabet=B64URL_ALPHABET + "=+/ ", max_size=60)
segments = b64ish | st.binary(max_size=60).map(b64) | json_values.map(lambda v: b64(json_bytes(v)))


def _assert_only_invalid_token_or_sane_principal(token: str) -> None:
    try:
        principal = FUZZ_VERIFIER.verify(token, now=NOW)
    except InvalidToken:
        return
    assert isinstance(principal, Principal)
    assert principal.source == "jwt"
    assert isinstance(principal.id, str) and principal.id
    assert all(isinstance(scope, str) for scope in principal.scopes)
    assert principal.token_id is None or isinstance(principal.token_id, str)
    assert principal.issuer is None or isinstance(principal.issuer, str)
    assert isinstance(principal.expires_at, int | float) and math.isfinite(principal.expires_at)
    assert principal.expires_at + 30 > NOW


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_p1_arbitrary_text_raises_only_invalid_token(text: str) -> None:
    with pytest.raises(InvalidToken):
        FUZZ_VERIFIER.verify(text, now=NOW)


@settings(max_examples=300, deadline=None)
@given(segments, segments, segments)
def test_p1_three_segment_base64url_strings_raise_only_invalid_token(header: str, payload: str, signature: str) -> None:
    with pytest.raises(InvalidToken):
        FUZZ_VERIFIER.verify(f"{header}.{payload}.{signature}", now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.sampled_from(B64URL_ALPHABET + ".=+/ \n\x00é") | st.characters())
def test_p1_valid_token_with_one_character_mutated_rejected(index: int, char: str) -> None:
    index %= len(VALID_TOKEN)
    mutated = VALID_TOKEN[:index] + char + VALID_TOKEN[index + 1 :]
    if mutated == VALID_TOKEN:
        assert FUZZ_VERIFIER.verify(mutated, now=NOW).id == "alice"
    else:
        with pytest.raises(InvalidToken):
            FUZZ_VERIFIER.verify(mutated, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(header_names, json_values, max_size=4), st.dictionaries(claim_names, json_values, max_size=6))
def test_p1_validly_signed_arbitrary_json_raises_only_invalid_token(
    header: dict[str, Any], extra: dict[str, Any]
) -> None:
    """A correct HMAC over arbitrary header members and claims: a sane Principal or InvalidToken, nothing else."""
    _assert_only_invalid_token_or_sane_principal(craft({"alg": "HS256", **header}, {**claims(), **extra}))
    _assert_only_invalid_token_or_sane_principal(craft({**header, "alg": "HS256"}, extra))


def test_p1_unexpected_error_in_principal_hook_becomes_invalid_token() -> None:
    def broken(claims: Mapping[str, Any]) -> Principal:
        raise KeyError("role")

    rejected(hs_verifier(to_principal=broken), craft())


# ---------------------------------------------------------------- P28: descriptions sent as written


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": None},
        {"iat": None},
        {"sub": None},
        {"iss": None},
        {"aud": None},
        {"exp": "soon"},
        {"nbf": [1]},
        {"iat": True},
        {"sub": 1},
        {"jti": ""},
        {"scope": 1},
        {"scp": {"a": 1}},
        {"auth_time": "x"},
    ],
)
def test_p28_claim_refusals_name_the_claim_without_quotes(overrides: dict[str, Any]) -> None:
    """The renderer turns a double quote into a space (RFC 6750 §3 forbids it in `error_description`): a
    description that needed it read 'the token has no  iat  claim'. Ours need none, and are sent as written."""
    verifier = hs_verifier(issuer=ISSUER, audience=AUDIENCE)
    everything = claims(iss=ISSUER, aud=AUDIENCE)
    token = craft(HS256, {k: v for k, v in {**everything, **overrides}.items() if v is not None})
    error = rejected(verifier, token)
    (name,) = overrides
    assert name in error.description.split()
    assert '"' not in error.description
    (challenge,) = [v for k, v in render_error(error, realm="authmw").headers if k == "www-authenticate"]
    assert challenge.endswith(f'error_description="{error.description}"')
    assert "  " not in challenge


# ---------------------------------------------------------------- P15: PyJWT's algorithm objects, constant time


@pytest.mark.parametrize(
    "name,cls",
    [
        ("HS256", HMACAlgorithm),
        ("HS512", HMACAlgorithm),
        ("RS256", RSAAlgorithm),
        ("PS256", RSAPSSAlgorithm),
        ("ES256", ECAlgorithm),
        ("EdDSA", OKPAlgorithm),
    ],
)
def test_p15_signatures_checked_by_pyjwt_algorithm_objects(name: str, cls: type) -> None:
    assert isinstance(authmw.keys.ALGORITHM_OBJECTS[name], cls)


def test_p15_hmac_verified_through_algorithm_object_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_verify = HMACAlgorithm.verify
    real_compare = hmac.compare_digest

    class SpyHMAC(HMACAlgorithm):
        def verify(self, msg: bytes, key: bytes, sig: bytes) -> bool:
            calls.append("verify")
            return real_verify(self, msg, key, sig)

    def spy_compare(a: Any, b: Any) -> bool:
        calls.append("compare_digest")
        return real_compare(a, b)

    monkeypatch.setitem(authmw.keys.ALGORITHM_OBJECTS, "HS256", SpyHMAC(HMACAlgorithm.SHA256))
    monkeypatch.setattr(hmac, "compare_digest", spy_compare)
    verifier = hs_verifier(cache_size=0)
    accepted(verifier, craft())
    assert calls == ["verify", "compare_digest"]
    calls.clear()
    rejected(verifier, craft(secret=OTHER_SECRET))
    assert calls == ["verify", "compare_digest"]


# ---------------------------------------------------------------- P30: the verified-token cache


def test_p30_cache_never_serves_past_exp() -> None:
    calls: list[str] = []
    verifier = hs_verifier(to_principal=counting_hook(calls))
    token = craft(HS256, claims(exp=NOW + 100))
    accepted(verifier, token, now=NOW)
    accepted(verifier, token, now=NOW + 99)
    assert len(calls) == 1  # served from the cache
    accepted(verifier, token, now=NOW + 100)  # at exp: verified again (accepted only thanks to the leeway)
    assert len(calls) == 2
    rejected(verifier, token, now=NOW + 131)  # past exp + leeway: the cache must not answer
    rejected(verifier, token, now=NOW + 10_000)


def test_p30_cache_bounded_by_cache_size() -> None:
    calls: list[str] = []
    verifier = hs_verifier(cache_size=3, to_principal=counting_hook(calls))
    tokens = [craft(HS256, claims(sub=f"user{i}")) for i in range(12)]
    for token in tokens:
        accepted(verifier, token)
    assert len(calls) == 12
    served_from_cache = 0
    for token in reversed(tokens):
        before = len(calls)
        accepted(verifier, token)
        served_from_cache += len(calls) == before
    assert 1 <= served_from_cache <= 3


def test_p30_cache_disabled_with_size_zero() -> None:
    calls: list[str] = []
    verifier = hs_verifier(cache_size=0, to_principal=counting_hook(calls))
    token = craft()
    for _ in range(3):
        accepted(verifier, token)
    assert len(calls) == 3


class SwappableKeySet(KeySet):
    """A static key set whose keys can be replaced, bumping `version` as a remote set does on rotation."""

    def swap(self, keys: list[VerificationKey]) -> None:
        version = self.version
        KeySet.__init__(self, keys)
        self.version = version + 1


def test_p30_cache_flushed_when_key_set_version_changes() -> None:
    calls: list[str] = []
    keyset = SwappableKeySet([VerificationKey.hmac(SECRET)])
    verifier = hs_verifier(keys=keyset, to_principal=counting_hook(calls))
    token = craft()
    accepted(verifier, token)
    accepted(verifier, token)
    assert len(calls) == 1
    keyset.swap([VerificationKey.hmac(SECRET)])  # same key, new version: verified again
    accepted(verifier, token)
    assert len(calls) == 2
    keyset.swap([VerificationKey.hmac(OTHER_SECRET)])  # the key is gone: the cached verdict must go too
    rejected(verifier, token)
    accepted(verifier, craft(secret=OTHER_SECRET))


def test_p30_cache_keyed_by_exact_token_string(hs: JWTVerifier) -> None:
    token = craft(HS256, payload_with_spare_bits())
    accepted(hs, token)
    header_b64, payload_b64, signature_b64 = token.split(".")
    rejected(hs, token + "=")
    rejected(hs, f"{header_b64}.{payload_b64}.{flip_unused_bits(signature_b64)}")


# ---------------------------------------------------------------- P32: key hygiene


@pytest.mark.parametrize("length", [1, 16, 31])
def test_p32_short_hmac_secret_raises(length: int) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=["HS256"], keys=SECRET[:length])
    with pytest.raises(ConfigurationError):
        VerificationKey.hmac(SECRET[:length])


def test_p32_empty_hmac_secret_raises() -> None:
    for empty in (b"", ""):
        with pytest.raises(ConfigurationError):
            JWTSettings(algorithms=["HS256"], keys=empty)


@pytest.mark.parametrize("alg,minimum", [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_p32_hmac_secret_at_least_hash_output(alg: str, minimum: int) -> None:
    with pytest.raises(ConfigurationError):
        JWTSettings(algorithms=[alg], keys=SECRET[: minimum - 1])
    verifier = hs_verifier(algorithms=[alg], keys=SECRET[:minimum])
    accepted(verifier, hs_token(SECRET[:minimum], alg=alg))


def test_p32_hmac_secret_too_short_for_hs512_is_not_used_for_it() -> None:
    verifier = hs_verifier(algorithms=["HS256", "HS512"], keys=SECRET[:40])
    accepted(verifier, craft(secret=SECRET[:40]))
    rejected(verifier, craft({"alg": "HS512", "typ": "JWT"}, secret=SECRET[:40], alg="HS512"))


@pytest.mark.parametrize("bits", [1024, 1536])
def test_p32_rsa_keys_under_2048_bits_raise(bits: int) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(65537, bits)
    for key in (private, private.public_key(), public_pem(private), public_jwk(private)):
        with pytest.raises(ConfigurationError):
            JWTSettings(algorithms=["RS256"], keys=key)


# ---------------------------------------------------------------- valid tokens and the Principal


ASYMMETRIC_CASES = [
    ("RS256", "rsa"),
    ("RS384", "rsa"),
    ("RS512", "rsa"),
    ("PS256", "rsa"),
    ("PS384", "rsa"),
    ("PS512", "rsa"),
    ("ES256", "p256"),
    ("ES384", "p384"),
    ("ES512", "p521"),
    ("EdDSA", "ed25519"),
    ("EdDSA", "ed448"),
]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_valid_hmac_tokens_verify(alg: str) -> None:
    verifier = hs_verifier(algorithms=[alg])
    assert accepted(verifier, hs_token(alg=alg)).id == "alice"


@pytest.mark.parametrize("alg,kind", ASYMMETRIC_CASES)
def test_valid_asymmetric_tokens_verify(km: KeyMaterial, alg: str, kind: str) -> None:
    private = getattr(km, kind)
    token = jwt.encode(claims(), private, algorithm=alg)
    for key in (public_pem(private), private.public_key(), KeySet.from_jwks({"keys": [public_jwk(private)]})):
        verifier = JWTVerifier(JWTSettings(algorithms=[alg], keys=key))
        assert accepted(verifier, token).id == "alice"
    tampered = token[:-8] + ("A" if token[-8] != "A" else "B") + token[-7:]
    rejected(JWTVerifier(JWTSettings(algorithms=[alg], keys=public_pem(private))), tampered)


@pytest.mark.parametrize(
    "extra,expected",
    [
        ({"scope": "a b  c"}, {"a", "b", "c"}),
        ({"scope": ""}, set()),
        ({"scp": ["a", "b"]}, {"a", "b"}),
        ({"scp": "a b"}, {"a", "b"}),
        ({"scopes": ["a", "b"]}, {"a", "b"}),
        ({"scope": "a", "scp": ["b"], "scopes": ["c"]}, {"a", "b", "c"}),
        ({}, set()),
    ],
)
def test_scopes_from_scope_scp_and_scopes(hs: JWTVerifier, extra: dict[str, Any], expected: set[str]) -> None:
    assert accepted(hs, craft(HS256, {**claims(scope=None), **extra})).scopes == frozenset(expected)


@pytest.mark.parametrize("extra", [{"scope": 5}, {"scope": ["a", 1]}, {"scp": {"a": 1}}, {"scopes": [None]}])
def test_malformed_scopes_rejected(hs: JWTVerifier, extra: dict[str, Any]) -> None:
    rejected(hs, craft(HS256, {**claims(scope=None), **extra}))


def test_to_principal_hook_is_used() -> None:
    seen: list[Mapping[str, Any]] = []

    def to_principal(claims: Mapping[str, Any]) -> Principal:
        seen.append(claims)
        return Principal(id="tenant1:" + claims["sub"], source="jwt", scopes=frozenset({"custom"}))

    principal = accepted(hs_verifier(to_principal=to_principal), craft(HS256, claims(tenant="tenant1")))
    assert principal.id == "tenant1:alice"
    assert principal.scopes == {"custom"}
    assert seen and seen[0]["tenant"] == "tenant1"


def test_to_principal_hook_not_called_for_invalid_tokens() -> None:
    calls: list[str] = []
    verifier = hs_verifier(to_principal=counting_hook(calls))
    rejected(verifier, craft(secret=OTHER_SECRET))
    rejected(verifier, craft(HS256, claims(exp=NOW - 1000, iat=NOW - 2000)))
    assert calls == []


def test_principal_fields() -> None:
    verifier = hs_verifier(issuer=ISSUER, audience=AUDIENCE)
    principal = accepted(
        verifier, craft(HS256, claims(iat=NOW - 10, exp=NOW + 300, jti="jti-1", iss=ISSUER, aud=AUDIENCE))
    )
    assert principal.id == "alice"
    assert principal.source == "jwt"
    assert principal.token_id == "jti-1"
    assert principal.issuer == ISSUER
    assert principal.issued_at == NOW - 10
    assert principal.auth_time == NOW - 10  # falls back to iat
    assert principal.expires_at == NOW + 300
    assert principal.scopes == {"items:read", "items:write"}
    assert principal.claims["aud"] == AUDIENCE
    with pytest.raises(TypeError):
        principal.claims["sub"] = "mallory"  # type: ignore[index]


def test_principal_auth_time_claim_preferred_and_checked(hs: JWTVerifier) -> None:
    assert accepted(hs, craft(HS256, claims(auth_time=NOW - 500))).auth_time == NOW - 500
    rejected(hs, craft(HS256, claims(auth_time="yesterday")))
    rejected(hs, craft(HS256, claims(auth_time=True)))
