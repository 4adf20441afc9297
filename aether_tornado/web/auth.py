"""Client tokens (HS256 JWTs that bind a connection to its client_id and group_id), and the
operators' API keys.

Claims: ``sub`` (the client_id), ``group`` (the group_id), ``exp`` (required), and an
optional ``broadcast: true`` that grants the right to send target ``broadcast``. A connection
lives no longer than its token: it is closed at ``exp`` (core/session.py).
"""

import hmac
from typing import Literal

import attrs
import jwt


class AuthError(Exception):
    """Why a token was refused, in a sentence fit for the 401 body."""


@attrs.frozen
class Grant:
    may_broadcast: bool
    expires: float  # the token's exp, in seconds since the epoch


def verify_token(secret: str, token: str | None, group_id: str, client_id: str) -> Grant:
    if not token:
        raise AuthError("A token is required: pass it as the 'token' query parameter.")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "group"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("The token has expired.") from None
    except jwt.InvalidTokenError as error:
        raise AuthError(f"The token is invalid: {error}.") from None
    if claims["sub"] != client_id or claims["group"] != group_id:
        raise AuthError("The token was issued for another client_id or group_id.")
    return Grant(may_broadcast=claims.get("broadcast") is True, expires=float(claims["exp"]))


def key_access(api_key: str, read_key: str | None, presented: str) -> Literal["full", "read"] | None:
    """What a presented key opens: ``full`` for the API key, ``read`` for the read-only key,
    None for anything else; each compared in constant time."""
    given = presented.encode()
    if presented and hmac.compare_digest(given, api_key.encode()):
        return "full"
    if presented and read_key is not None and hmac.compare_digest(given, read_key.encode()):
        return "read"
    return None
