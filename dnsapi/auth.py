"""Who is calling, and may they touch this name?

Tokens are configured only as SHA-256 hashes. A presented token is hashed and compared with every
configured hash in constant time (hmac.compare_digest, no early exit), so neither the token nor
which entry matched leaks through timing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from .config import TokenConfig
from .errors import Forbidden, Unauthorized
from .names import patterns_allow


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def credential_from_header(header: str) -> str:
    """The secret in `Authorization: Bearer T`, or the password of `Authorization: Basic ...`
    (lego's httpreq provider sends the token that way)."""
    scheme, _, rest = header.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        try:
            rest.encode("utf-8")  # (aiohttp hands undecodable header bytes over as surrogates)
        except UnicodeEncodeError:
            raise Unauthorized("malformed Bearer token: not UTF-8") from None
        return rest
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic credentials") from None
        password = decoded.partition(":")[2]
        if password:
            return password
    raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")


class Authenticator:
    def __init__(self, tokens: tuple[TokenConfig, ...], challenge_label: str,
                 open_zones: tuple[str, ...] | None = None) -> None:
        """`open_zones`: with open_on_loopback, a request without credentials acts as an anonymous
        token allowed everything below these zones."""
        self.tokens = tokens
        self.challenge_label = challenge_label
        self.anonymous = None if open_zones is None else TokenConfig.model_construct(
            name="anonymous", sha256="", allow=tuple(f"*.{zone}" for zone in open_zones))

    def authenticate(self, header: str) -> TokenConfig:
        if not header.strip() and self.anonymous is not None:
            return self.anonymous
        digest = hash_token(credential_from_header(header))
        found: TokenConfig | None = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.sha256):
                found = token
        if found is None:
            raise Unauthorized("invalid token")
        return found

    def allows(self, token: TokenConfig, fqdn: str) -> bool:
        return patterns_allow(token.allow, fqdn, self.challenge_label)

    def authorize(self, token: TokenConfig, fqdn: str) -> None:
        if not self.allows(token, fqdn):
            raise Forbidden(f"token {token.name!r} may not change {fqdn}")
