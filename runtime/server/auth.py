"""The bearer token check, one rule for HTTP (aiohttp and the fast path) and gRPC.

``Authorization: Bearer <token>``: the scheme is case-insensitive (RFC 7235 §2.1, so ``bearer``
and ``BEARER`` are the same scheme), the token is compared exactly and in constant time. A 401
names the scheme in ``WWW-Authenticate`` (RFC 7235 §3.1).
"""
from __future__ import annotations

import hmac

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edgemp"'}


def token_bytes(token: str | None) -> bytes | None:
    """The configured token as the bytes a credential is compared with (None: no token asked)."""
    return None if token is None else token.encode()


def bearer_matches(header: bytes | None, token: bytes) -> bool:
    """Whether an ``Authorization`` value carries ``token`` as its Bearer credential."""
    if not header:
        return False
    scheme, _, credential = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credential.lstrip(b" "), token)
