"""A TCP proxy between the dialects and a database server, whose links can be cut the way a
server that went away unseen cuts them (a restart behind a load balancer, a failover): the
server's side closes at once, and the client's side stays open, so a pool still hands the
connection out, until the client next sends, when it closes as a dead peer's does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc


@dataclass(eq=False)
class _Link:
    client: anyio.abc.SocketStream
    server: anyio.abc.SocketStream
    replies: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    cut: bool = False
    #: its replies go nowhere (see Proxy.lose_open_links)
    lost: bool = False


class Proxy:
    def __init__(self, port: int, target: tuple[str, int]) -> None:
        #: where clients connect
        self.port = port
        self._target = target
        self._links: set[_Link] = set()
        #: links opened so far
        self.opened = 0
        #: queries a cut link refused: each one a client sent on a connection it thought alive
        self.refused = 0
        #: set while the proxy is a black hole (see freeze)
        self._thawed = anyio.Event()
        self._thawed.set()

    async def cut(self) -> int:
        """Cut every open link; returns how many there were."""
        links = list(self._links)
        for link in links:
            link.cut = True
            link.replies.cancel()
            await link.server.aclose()
        return len(links)

    def freeze(self) -> None:
        """Become a black hole, the way a server whose host froze (or a network that drops
        every packet) is one: every link stays open, and nothing is carried either way, nor
        does a new link reach the server, until thaw()."""
        self._thawed = anyio.Event()

    def thaw(self) -> None:
        self._thawed.set()

    def lose_open_links(self) -> None:
        """The server's host vanishes with the open links (a failover that moves its address,
        a machine that is gone): what they carry reaches the server, but no reply, nor a reset,
        ever comes back on them. New links work."""
        for link in self._links:
            link.lost = True

    async def _serve(self, client: anyio.abc.SocketStream) -> None:
        await self._thawed.wait()
        async with client, await anyio.connect_tcp(*self._target) as server:
            link = _Link(client, server)
            self._links.add(link)
            self.opened += 1
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._replies, link, tg.cancel_scope)
                    await self._queries(link)
                    tg.cancel_scope.cancel()
            finally:
                self._links.discard(link)

    async def _queries(self, link: _Link) -> None:
        try:
            async for data in link.client:
                if link.cut:
                    self.refused += 1
                    return
                await self._thawed.wait()
                await link.server.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def _replies(self, link: _Link, whole_link: anyio.CancelScope) -> None:
        with link.replies:
            try:
                async for data in link.server:
                    if link.lost:
                        await anyio.sleep_forever()
                    await self._thawed.wait()
                    await link.client.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            whole_link.cancel()  # the server closed: so does the client's side


@asynccontextmanager
async def proxy(host: str, port: int) -> AsyncIterator[Proxy]:
    """A proxy to ``host:port`` on a free local port, for as long as the context is open."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        found = Proxy(listener.extra(anyio.abc.SocketAttribute.local_port), (host, port))
        tg.start_soon(listener.serve, found._serve)
        try:
            yield found
        finally:
            tg.cancel_scope.cancel()
