"""Bearer tokens (RFC 6750) on the routes that need one (the coordinator's writes, the devnet)."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token``: the scheme name in any case (RFC 9110
    §11.1), one or more spaces, then the token, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.lstrip(" ").encode(), token.encode())
