"""Masked user tags: the ids that leave the server (session cookies, refresh tokens) do not name their user.

Inside the server a session id or refresh token is ``<tag>.<random>``, where the tag (`authmw.stores.user_tag`,
16 bits of a hash of the user id) puts all of one user's Redis keys in one Cluster slot. Outside, the tag is XORed
with a keyed hash of the random part: the same shape (4 hex characters), but two credentials of one user show
unrelated first parts, and without the key nobody can recover the tag or test a guessed user name against it.

`TagMask.mask` and `TagMask.unmask` are the only way between the two forms (the same XOR, named by direction).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["PURPOSE", "TagMask"]

#: the label the mask key is derived under: it never equals a key used for anything else
PURPOSE = b"authmw.tag-mask"


class TagMask:
    """Masks and unmasks the tag of ``<4 hex>.<base64url>`` ids with a key derived from a server secret."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        key = hmac.new(secret, PURPOSE, hashlib.sha256).digest()
        # Keyed once; each id costs a copy of this state (about half the cost of keying a new hash).
        self._keyed = hashlib.blake2b(key=key, digest_size=2)

    def _flip(self, value: str) -> str:
        keyed = self._keyed.copy()
        keyed.update(value[5:].encode("ascii"))
        return (int(value[:4], 16) ^ int.from_bytes(keyed.digest(), "big")).to_bytes(2, "big").hex() + value[4:]

    def mask(self, internal: str) -> str:
        """``<tag>.<random>`` as it may leave the server: ``<tag XOR keyed hash of random>.<random>``."""
        return self._flip(internal)

    def unmask(self, public: str) -> str:
        """The internal ``<tag>.<random>`` of an id masked with this key (another key gives another, meaningless
        tag). `public` must already have the shape ``<4 lowercase hex>.<base64url>``: callers check it first."""
        return self._flip(public)
