"""What the streaming tests share: a callback per token count, however the tokens were batched."""
from __future__ import annotations

from collections.abc import Awaitable, Callable


async def tell_each_count(on_token: Callable[[int], Awaitable[None]], before: int, after: int) -> None:
    """Await `on_token(n)` once for each n in (before, after]: a delta carries several tokens when
    the stream runs ahead of its reader, and a test that acts at `n == 10` must not miss 10."""
    for n in range(before + 1, after + 1):
        await on_token(n)
