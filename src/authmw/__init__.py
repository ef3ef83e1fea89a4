"""authmw: authentication middleware for ASGI and WSGI apps (server-side sessions and bearer JWTs, per route).

from authmw import AuthConfig, JWTSettings, Policy, Route
from authmw.asgi import AuthMiddleware        # or authmw.wsgi.AuthMiddleware

app = AuthMiddleware(app, AuthConfig(
    jwt=JWTSettings(algorithms=["HS256"], keys=secret),
    routes=[Route("/api/{rest:path}", Policy.jwt(scopes={"items:read"})), Route("/health", Policy.public())],
))
"""

from authmw.config import AuthConfig
from authmw.engine import Authenticator, AuthState
from authmw.errors import (
    AuthError,
    ConfigurationError,
    CSRFError,
    ErrorResponse,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    ServiceUnavailable,
)
from authmw.keys import KeySet, RemoteKeySet, VerificationKey
from authmw.policy import Policy, Route, RouteTable
from authmw.principal import ANONYMOUS, Principal
from authmw.tokens import JWTSettings, JWTVerifier

__all__ = [
    "ANONYMOUS",
    "AuthConfig",
    "AuthError",
    "AuthState",
    "Authenticator",
    "CSRFError",
    "ConfigurationError",
    "ErrorResponse",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "JWTSettings",
    "JWTVerifier",
    "KeySet",
    "MissingCredentials",
    "Policy",
    "Principal",
    "RemoteKeySet",
    "Route",
    "RouteTable",
    "ServiceUnavailable",
    "VerificationKey",
]
__version__ = "0.1.0"
