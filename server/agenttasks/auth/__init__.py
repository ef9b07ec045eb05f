"""Authentication and authorization, independent of the transport (nothing here imports grpc).

The gRPC layer calls `Authenticator.authenticate` with the call metadata, then `authorize`
with the principal and the full method name; both raise domain errors it maps to statuses.
"""

from agenttasks.auth.api_keys import (
    create_api_key,
    hash_secret,
    new_api_key,
    parse_api_key,
    revoke_api_key,
    verify_secret,
)
from agenttasks.auth.authenticator import Authenticator
from agenttasks.auth.jwt_tokens import JwtVerifier, issue_token
from agenttasks.auth.roles import allowed_roles, authorize
from agenttasks.auth.secrets_store import server_jwt_secret

__all__ = [
    "Authenticator",
    "JwtVerifier",
    "allowed_roles",
    "authorize",
    "create_api_key",
    "hash_secret",
    "issue_token",
    "new_api_key",
    "parse_api_key",
    "revoke_api_key",
    "server_jwt_secret",
    "verify_secret",
]
