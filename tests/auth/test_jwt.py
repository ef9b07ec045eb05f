"""JWT verification with real HS256 secrets and real RSA and EC keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from agenttasks.auth.jwt_tokens import JwtVerifier, issue_token
from agenttasks.core.errors import Unauthenticated
from agenttasks.core.model import Principal, Role, utcnow
from agenttasks.settings import Settings

SECRET = "k" * 43


def _settings(**overrides: Any) -> Settings:
    # Every auth field is given, so AGENTTASKS_* variables in the environment cannot leak in.
    values: dict[str, Any] = {
        "jwt_secret": None,
        "jwt_public_key": None,
        "jwt_issuer": None,
        "jwt_audience": None,
        "jwt_tenant_claim": "sub",
        "jwt_role_claim": "role",
        "jwt_leeway_seconds": 30,
    }
    values.update(overrides)
    return Settings(**values)


def _public_pem(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _claims(**extra: Any) -> dict[str, Any]:
    now = utcnow()
    return {"sub": "acme", "iat": now, "exp": now + timedelta(minutes=5), **extra}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge_hs256(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token MACed with `key`, built by hand: PyJWT itself refuses a PEM as HMAC key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims, default=lambda d: int(d.timestamp())).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def _rejected(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    return caught.value.message


# --- HS256 ---


def test_hs256_token_from_issue_token_is_accepted() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    assert verifier.algorithms == ("HS256",)
    token = issue_token(SECRET, "acme", 60)
    assert verifier.verify(token) == Principal(tenant="acme", role=Role.CLIENT, subject="acme")


def test_secret_argument_is_used_when_none_is_configured() -> None:
    verifier = JwtVerifier(_settings(), SECRET)
    assert verifier.verify(issue_token(SECRET, "acme", 60)).tenant == "acme"


def test_configured_secret_wins_over_the_argument() -> None:
    other = "o" * 43
    verifier = JwtVerifier(_settings(jwt_secret=SECRET), other)
    assert verifier.verify(issue_token(SECRET, "acme", 60)).tenant == "acme"
    _rejected(verifier, issue_token(other, "acme", 60))


@pytest.mark.parametrize("role", list(Role))
def test_role_comes_from_the_role_claim(role: Role) -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    assert verifier.verify(issue_token(SECRET, "acme", 60, role=role)).role is role


def test_role_defaults_to_client_when_absent() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert verifier.verify(token).role is Role.CLIENT


@pytest.mark.parametrize("bad_role", ["root", "", "ADMIN", 1, None, ["admin"], {"name": "admin"}])
def test_unknown_role_is_rejected(bad_role: object) -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = jwt.encode(_claims(role=bad_role), SECRET, algorithm="HS256")
    assert "'role' claim" in _rejected(verifier, token)


AGENT = "0192f3a4-5b6c-7d8e-9f01-23456789abcd"


def test_a_worker_token_may_name_its_one_agent() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = issue_token(SECRET, "acme", 60, role=Role.WORKER, agent_id=AGENT)
    assert verifier.verify(token) == Principal(tenant="acme", role=Role.WORKER, subject="acme", agent_id=AGENT)
    assert verifier.verify(issue_token(SECRET, "acme", 60, role=Role.WORKER)).agent_id == ""
    # An identity provider's own spelling of the id is read as hello's agent_id is.
    upper = jwt.encode(_claims(role="worker", agent_id=AGENT.upper()), SECRET, algorithm="HS256")
    assert verifier.verify(upper).agent_id == AGENT
    with pytest.raises(ValueError, match="only a worker token"):
        issue_token(SECRET, "acme", 60, role=Role.CLIENT, agent_id=AGENT)
    with pytest.raises(ValueError, match="must be an agent id"):
        issue_token(SECRET, "acme", 60, role=Role.WORKER, agent_id="agent-7")


@pytest.mark.parametrize(
    ("role", "agent"), [("client", AGENT), ("admin", AGENT), ("worker", 7), ("worker", "not-an-id")]
)
def test_an_agent_claim_on_a_non_worker_token_or_not_a_string_is_rejected(role: str, agent: object) -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = jwt.encode(_claims(role=role, agent_id=agent), SECRET, algorithm="HS256")
    assert "'agent_id' claim" in _rejected(verifier, token)


def test_custom_role_claim() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET, jwt_role_claim="agenttasks_role"))
    token = jwt.encode(_claims(role="client", agenttasks_role="admin"), SECRET, algorithm="HS256")
    assert verifier.verify(token).role is Role.ADMIN


def test_expired_beyond_leeway_is_rejected() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    # Expired two minutes ago, far outside the 30 s leeway.
    token = issue_token(SECRET, "acme", 60, now=utcnow() - timedelta(minutes=3))
    assert _rejected(verifier, token) == "token has expired"


def test_expired_within_leeway_is_accepted() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    # Expired 5 s ago, well inside the 30 s leeway.
    token = issue_token(SECRET, "acme", 60, now=utcnow() - timedelta(seconds=65))
    assert verifier.verify(token).tenant == "acme"


def test_leeway_comes_from_settings() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET, jwt_leeway_seconds=0))
    token = issue_token(SECRET, "acme", 60, now=utcnow() - timedelta(seconds=65))
    assert _rejected(verifier, token) == "token has expired"


def test_missing_exp_is_rejected() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = jwt.encode({"sub": "acme", "role": "admin"}, SECRET, algorithm="HS256")
    assert _rejected(verifier, token) == "token has no 'exp' claim"


def test_not_yet_valid_is_rejected() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = jwt.encode(_claims(nbf=utcnow() + timedelta(minutes=2)), SECRET, algorithm="HS256")
    assert _rejected(verifier, token) == "token is not valid yet"


def test_wrong_secret_is_rejected() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    assert _rejected(verifier, issue_token("w" * 43, "acme", 60)) == "token signature is invalid"


def test_tampered_claims_are_rejected() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    header, _, signature = issue_token(SECRET, "acme", 60).split(".")
    body = _b64(json.dumps({"sub": "acme", "role": "admin", "exp": 4102444800}).encode())
    assert _rejected(verifier, f"{header}.{body}.{signature}") == "token signature is invalid"


def test_issuer_is_checked_when_configured() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET, jwt_issuer="https://idp.example"))
    assert verifier.verify(issue_token(SECRET, "acme", 60, issuer="https://idp.example")).tenant == "acme"
    assert _rejected(verifier, issue_token(SECRET, "acme", 60, issuer="https://evil.example")) == (
        "token issuer is not accepted"
    )
    assert _rejected(verifier, issue_token(SECRET, "acme", 60)) == "token has no 'iss' claim"


def test_issuer_is_ignored_when_not_configured() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    assert verifier.verify(issue_token(SECRET, "acme", 60, issuer="https://idp.example")).tenant == "acme"


def test_audience_is_checked_when_configured() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET, jwt_audience="agenttasks"))
    assert verifier.verify(issue_token(SECRET, "acme", 60, audience="agenttasks")).tenant == "acme"
    list_aud = jwt.encode(_claims(aud=["other", "agenttasks"]), SECRET, algorithm="HS256")
    assert verifier.verify(list_aud).tenant == "acme"
    assert _rejected(verifier, issue_token(SECRET, "acme", 60, audience="billing")) == (
        "token audience is not accepted"
    )
    assert _rejected(verifier, issue_token(SECRET, "acme", 60)) == "token has no 'aud' claim"


def test_token_for_another_audience_is_rejected_even_when_none_is_configured() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = issue_token(SECRET, "acme", 60, audience="billing")
    assert _rejected(verifier, token) == "token audience is not accepted"


def test_tenant_from_a_custom_claim() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET, jwt_tenant_claim="tid"))
    token = jwt.encode(_claims(sub="user-17", tid="acme"), SECRET, algorithm="HS256")
    assert verifier.verify(token) == Principal(tenant="acme", role=Role.CLIENT, subject="user-17")


def test_issue_token_fills_a_custom_tenant_claim() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET, jwt_tenant_claim="tid"))
    token = issue_token(SECRET, "acme", 60, tenant_claim="tid")
    assert verifier.verify(token).tenant == "acme"


@pytest.mark.parametrize("tenant", [None, "", "   ", 42, ["acme"]])
def test_missing_or_unusable_tenant_claim_is_rejected(tenant: object) -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET, jwt_tenant_claim="tid"))
    claims = _claims() if tenant is None else _claims(tid=tenant)
    assert _rejected(verifier, jwt.encode(claims, SECRET, algorithm="HS256")) == (
        "token has no 'tid' claim naming the tenant"
    )


def test_alg_none_is_rejected() -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = jwt.encode(_claims(role="admin"), None, algorithm="none")  # type: ignore[arg-type]
    assert jwt.get_unverified_header(token)["alg"] == "none"
    assert _rejected(verifier, token) == "token algorithm is not accepted by this server"


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_rejected(algorithm: str) -> None:
    verifier = JwtVerifier(_settings(jwt_secret=SECRET))
    token = jwt.encode(_claims(), SECRET + "x" * 30, algorithm=algorithm)
    assert _rejected(verifier, token) == "token algorithm is not accepted by this server"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        JwtVerifier(_settings(jwt_secret="changeme"))
    with pytest.raises(ValueError, match="at least 32"):
        issue_token("changeme", "acme", 60)


def test_no_key_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="no JWT key"):
        JwtVerifier(_settings())


@pytest.mark.parametrize(("tenant", "ttl", "role"), [("", 60, "client"), ("acme", 0, "client"), ("acme", 60, "root")])
def test_issue_token_rejects_bad_arguments(tenant: str, ttl: int, role: str) -> None:
    with pytest.raises(ValueError):
        issue_token(SECRET, tenant, ttl, role=role)


def test_issued_token_claims() -> None:
    token = issue_token(SECRET, "acme", 600, role="worker", issuer="me", audience="you")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="you", issuer="me")
    assert claims["sub"] == "acme"
    assert claims["role"] == "worker"
    assert claims["exp"] - claims["iat"] == 600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


# --- RS256 / ES256 ---


def test_rs256_token_is_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(rsa_key)))
    assert verifier.algorithms == ("RS256",)
    token = jwt.encode(_claims(role="worker"), rsa_key, algorithm="RS256")
    assert verifier.verify(token) == Principal(tenant="acme", role=Role.WORKER, subject="acme")


def test_es256_token_is_accepted(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(ec_key)))
    assert verifier.algorithms == ("ES256",)
    token = jwt.encode(_claims(role="admin"), ec_key, algorithm="ES256")
    assert verifier.verify(token) == Principal(tenant="acme", role=Role.ADMIN, subject="acme")


def test_rs256_token_signed_by_another_key_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(rsa_key)))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), other, algorithm="RS256")
    assert _rejected(verifier, token) == "token signature is invalid"


def test_es256_token_signed_by_another_key_is_rejected(ec_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(ec_key)))
    token = jwt.encode(_claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert _rejected(verifier, token) == "token signature is invalid"


def test_hs256_signed_with_the_rsa_public_key_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = _public_pem(rsa_key)
    verifier = JwtVerifier(_settings(jwt_public_key=pem))
    token = _forge_hs256(_claims(role="admin"), pem.encode())
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert _rejected(verifier, token) == "token algorithm is not accepted by this server"


def test_hs256_signed_with_the_ec_public_key_is_rejected(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = _public_pem(ec_key)
    verifier = JwtVerifier(_settings(jwt_public_key=pem))
    token = _forge_hs256(_claims(role="admin"), pem.encode())
    assert _rejected(verifier, token) == "token algorithm is not accepted by this server"


def test_alg_none_is_rejected_with_a_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(rsa_key)))
    token = jwt.encode(_claims(role="admin"), None, algorithm="none")  # type: ignore[arg-type]
    assert _rejected(verifier, token) == "token algorithm is not accepted by this server"


def test_key_type_pins_the_algorithm(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    rs_verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(rsa_key)))
    es_verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(ec_key)))
    assert _rejected(rs_verifier, jwt.encode(_claims(), ec_key, algorithm="ES256")) == (
        "token algorithm is not accepted by this server"
    )
    assert _rejected(es_verifier, jwt.encode(_claims(), rsa_key, algorithm="RS256")) == (
        "token algorithm is not accepted by this server"
    )
    # Same key, different padding/hash: still not the pinned algorithm.
    assert _rejected(rs_verifier, jwt.encode(_claims(), rsa_key, algorithm="PS256")) == (
        "token algorithm is not accepted by this server"
    )


def test_public_key_replaces_the_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(rsa_key), jwt_secret=SECRET), SECRET)
    assert _rejected(verifier, issue_token(SECRET, "acme", 60)) == ("token algorithm is not accepted by this server")


def test_public_key_checks_exp_iss_aud(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(_settings(jwt_public_key=_public_pem(rsa_key), jwt_issuer="idp", jwt_audience="agenttasks"))
    good = _claims(iss="idp", aud="agenttasks")
    assert verifier.verify(jwt.encode(good, rsa_key, algorithm="RS256")).tenant == "acme"
    expired = {**good, "exp": utcnow() - timedelta(minutes=2)}
    assert _rejected(verifier, jwt.encode(expired, rsa_key, algorithm="RS256")) == "token has expired"
    no_exp = {k: v for k, v in good.items() if k != "exp"}
    assert _rejected(verifier, jwt.encode(no_exp, rsa_key, algorithm="RS256")) == "token has no 'exp' claim"
    wrong_iss = {**good, "iss": "other"}
    assert _rejected(verifier, jwt.encode(wrong_iss, rsa_key, algorithm="RS256")) == ("token issuer is not accepted")
    wrong_aud = {**good, "aud": "other"}
    assert _rejected(verifier, jwt.encode(wrong_aud, rsa_key, algorithm="RS256")) == ("token audience is not accepted")


def test_unusable_public_keys_are_refused_at_construction() -> None:
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
    with pytest.raises(ValueError, match="1024-bit RSA"):
        JwtVerifier(_settings(jwt_public_key=_public_pem(weak_rsa)))
    with pytest.raises(ValueError, match="secp384r1"):
        JwtVerifier(_settings(jwt_public_key=_public_pem(ec.generate_private_key(ec.SECP384R1()))))
    with pytest.raises(ValueError, match="only RSA"):
        JwtVerifier(_settings(jwt_public_key=_public_pem(ed25519.Ed25519PrivateKey.generate())))
    with pytest.raises(ValueError, match="not a PEM public key"):
        JwtVerifier(_settings(jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"))


# --- garbage never escapes as anything but Unauthenticated ---


@pytest.mark.parametrize(
    "token",
    ["", ".", "..", "a.b.c", "a.b", "a.b.c.d", "eyJ.eyJ.eyJ", "atk_0123456789abcdef_" + "s" * 43, "é.é.é"],
)
def test_malformed_tokens_are_rejected(token: str) -> None:
    _rejected(JwtVerifier(_settings(jwt_secret=SECRET)), token)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_HEADER = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "RS256", "ES256", "PS256", "none", "", "HS256 "]) | _JSON},
    optional={"typ": _JSON, "kid": _JSON, "crit": _JSON, "b64": _JSON},
).map(lambda value: _b64(json.dumps(value).encode()))
_SEGMENT = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=80).map(_b64),
    _JSON.map(lambda value: _b64(json.dumps(value).encode())),
)
_TOKENS = st.lists(_SEGMENT, min_size=1, max_size=4).map(".".join) | st.tuples(_HEADER, _SEGMENT, _SEGMENT).map(
    ".".join
)


@pytest.fixture(scope="module")
def verifiers(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, JwtVerifier]:
    return {
        "HS256": JwtVerifier(_settings(jwt_secret=SECRET)),
        "RS256": JwtVerifier(_settings(jwt_public_key=_public_pem(rsa_key))),
        "ES256": JwtVerifier(_settings(jwt_public_key=_public_pem(ec_key))),
    }


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "ES256"])
@settings(database=None, max_examples=300)
@given(token=_TOKENS)
def test_fuzzed_tokens_only_ever_raise_unauthenticated(
    verifiers: dict[str, JwtVerifier], algorithm: str, token: str
) -> None:
    try:
        verifiers[algorithm].verify(token)
    except Unauthenticated:
        pass
    else:  # pragma: no cover - a forged token that verifies would be a real bug
        pytest.fail(f"accepted a fuzzed token: {token!r}")
