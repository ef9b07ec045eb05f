"""JWT bearer tokens: verifying them into a `Principal`, and minting HS256 ones.

The accepted algorithms are fixed by configuration, never read from the token: HS256 with a
shared secret, or, when `jwt_public_key` is set, RS256 or ES256 as the key's type dictates. A
token whose header names any other algorithm (`none`, or HS256 "signed" with the public key,
the classic algorithm-confusion attack) is rejected before its signature is looked at.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from agenttasks.core.errors import Unauthenticated
from agenttasks.core.ids import agent_scope
from agenttasks.core.model import Principal, Role, utcnow
from agenttasks.settings import Settings

HS256_MIN_SECRET_BYTES = 32
"""RFC 7518 section 3.2: an HS256 key MUST be at least as long as the hash (256 bits)."""

RSA_MIN_KEY_BITS = 2048
"""NIST SP 800-131A; PyJWT also warns on every call below this, so we refuse such keys up front."""

_ROLE_VALUES = frozenset(role.value for role in Role)
_ROLE_NAMES = ", ".join(role.value for role in Role)

# Why a token failed, in words safe to show the caller. Checked in order (first isinstance wins),
# so subclasses come before their bases; anything else from PyJWT is a generic "invalid token".
# The claim naming the one agent a worker token serves (like a scoped API key); optional.
AGENT_CLAIM = "agent_id"

_FAILURES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted by this server"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
)


def _check_hs256_secret(secret: str) -> bytes:
    key = secret.encode()
    if len(key) < HS256_MIN_SECRET_BYTES:
        raise ValueError(
            f"the JWT secret is {len(key)} bytes; HS256 needs at least {HS256_MIN_SECRET_BYTES} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return key


def _load_public_key(pem: str) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, str]:
    """The verification key and the one algorithm it serves, or ValueError naming what is wrong."""
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ValueError(f"jwt_public_key is not a PEM public key: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_KEY_BITS:
            raise ValueError(f"jwt_public_key is a {key.key_size}-bit RSA key; use {RSA_MIN_KEY_BITS}+ bits")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"jwt_public_key is on curve {key.curve.name}; ES256 needs P-256 (secp256r1)")
        return key, "ES256"
    raise ValueError(f"jwt_public_key is a {type(key).__name__}; only RSA (RS256) and P-256 (ES256) are supported")


class JwtVerifier:
    """Checks bearer JWTs against the configured key, issuer, audience and claims.

    `secret` is the HS256 secret to use when `settings.jwt_secret` is unset (the server passes
    the one generated in the store, see `server_jwt_secret`). When `settings.jwt_public_key` is
    set it is used *instead of* any secret, as the setting documents: accepting both kinds at
    once would widen what a stolen secret can forge for no benefit.

    Raises ValueError at construction for an unusable key, so a misconfiguration stops startup
    rather than failing every call.
    """

    def __init__(self, settings: Settings, secret: str | None = None) -> None:
        self._key: bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
        if settings.jwt_public_key:
            self._key, algorithm = _load_public_key(settings.jwt_public_key)
        else:
            configured = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
            chosen = configured or secret
            if not chosen:
                raise ValueError("no JWT key: set jwt_secret or jwt_public_key, or pass the generated secret")
            self._key, algorithm = _check_hs256_secret(chosen), "HS256"
        self.algorithms: tuple[str, ...] = (algorithm,)
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_seconds
        self._tenant_claim = settings.jwt_tenant_claim
        self._role_claim = settings.jwt_role_claim

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; Unauthenticated (with a reason) for anything else.

        `exp` is required. `iss`/`aud` must match when configured; a token that carries an `aud`
        when none is configured is rejected too (RFC 7519 4.1.3: it was meant for someone else).
        The principal's subject is the `sub` claim, or "" when the token has none (possible only
        when the tenant comes from another claim).
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp"], "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            message = next((text for kind, text in _FAILURES if isinstance(exc, kind)), "token is invalid")
            raise Unauthenticated(message) from None

        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not tenant.strip():
            raise Unauthenticated(f"token has no {self._tenant_claim!r} claim naming the tenant")

        raw_role = claims.get(self._role_claim, Role.CLIENT.value)
        if not isinstance(raw_role, str) or raw_role not in _ROLE_VALUES:
            raise Unauthenticated(f"token {self._role_claim!r} claim is not one of {_ROLE_NAMES}")

        # A worker token may name the one agent it serves, as a scoped API key does.
        agent_id = claims.get(AGENT_CLAIM, "")
        if not isinstance(agent_id, str) or (agent_id and raw_role != Role.WORKER.value):
            raise Unauthenticated(f"token {AGENT_CLAIM!r} claim must be a string, and only on a worker token")
        try:
            agent_id = agent_scope(agent_id)  # the canonical spelling hello's id gets
        except ValueError:
            raise Unauthenticated(f"token {AGENT_CLAIM!r} claim is not an agent id") from None
        subject = claims.get("sub")
        return Principal(
            tenant=tenant,
            role=Role(raw_role),
            subject=subject if isinstance(subject, str) else "",
            agent_id=agent_id,
        )


def issue_token(
    secret: str,
    tenant: str,
    ttl_seconds: float,
    role: Role | str = Role.CLIENT,
    issuer: str | None = None,
    audience: str | None = None,
    *,
    tenant_claim: str = "sub",
    role_claim: str = "role",
    agent_id: str = "",
    now: datetime | None = None,
) -> str:
    """Mints an HS256 token for `tenant` valid for `ttl_seconds` (for `agenttasks token` and tests).

    The tenant goes in `sub`, and also in `tenant_claim` when the server is configured to read it
    from elsewhere. `now` backdates the token (tests use it to make expired tokens without
    sleeping). Raises ValueError for a short secret, an empty tenant, a non-positive TTL or an
    unknown role, so a bad CLI invocation fails before producing a useless token.
    """
    key = _check_hs256_secret(secret)
    if not tenant:
        raise ValueError("tenant must not be empty")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    if agent_id and Role(role) is not Role.WORKER:
        raise ValueError("only a worker token can be scoped to an agent")
    agent_id = agent_scope(agent_id)
    issued = now or utcnow()
    claims: dict[str, Any] = {
        "sub": tenant,
        tenant_claim: tenant,
        role_claim: Role(role).value,
        "iat": issued,
        "exp": issued + timedelta(seconds=ttl_seconds),
    }
    if agent_id:
        claims[AGENT_CLAIM] = agent_id
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, key, algorithm="HS256")
