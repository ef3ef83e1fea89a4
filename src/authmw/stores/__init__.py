"""Where sessions, token revocations and refresh tokens live: `MemoryStore` (this process) or `RedisStore`.

Each store operation returns a flow (see `authmw.io`): ``run_sync(store.load(sid, 60))``, or
``await run_async(store.load(sid, 60))`` on an event loop. `authmw.stores.base` has the records and the two
protocols a store meets (`SessionStore`, `TokenStore`); `authmw.stores.localcache` the opt-in local cache of a
`RedisStore`.
"""

from authmw.stores.base import (
    RefreshOutcome,
    RefreshRecord,
    SessionRecord,
    SessionStore,
    StoreUnavailable,
    TokenStore,
    user_tag,
)
from authmw.stores.memory import MemoryStore
from authmw.stores.redis import RedisStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "RefreshOutcome",
    "RefreshRecord",
    "SessionRecord",
    "SessionStore",
    "StoreUnavailable",
    "TokenStore",
    "user_tag",
]
