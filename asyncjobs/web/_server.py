"""``python -m asyncjobs admin``: the admin on its own little server (uvicorn).

Without a credential it serves on a loopback address only, says so, and refuses requests whose
``Host`` is not a loopback name. The process only reads and acts on jobs; it runs none
(workers do that).
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ..exceptions import ConfigurationError, MissingDriverError
from ._app import AdminApp, create_app
from ._security import LOOPBACK_HOSTS

if TYPE_CHECKING:
    from ..runtime import BackgroundJobs

DEFAULT_PORT = 8700


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_admin(
    jobs: BackgroundJobs,
    host: str,
    *,
    bearer_token: str | None = None,
    basic_auth: str | None = None,
) -> tuple[AdminApp, str]:
    """The app for the standalone server and a line that says how it is protected."""
    if bearer_token or basic_auth:
        admin = create_app(jobs, bearer_token=bearer_token or None, basic_auth=basic_auth or None)
        how = "bearer token" if bearer_token else "basic auth"
        if bearer_token and basic_auth:
            how = "bearer token or basic auth"
        return admin, f"access needs the configured {how}"
    if not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the jobs admin on {host} without a credential: pass --token or "
            "--basic-auth (or set ASYNCJOBS_ADMIN_TOKEN / ASYNCJOBS_ADMIN_BASIC_AUTH), or "
            "keep the default --host 127.0.0.1"
        )
    admin = create_app(
        jobs, allow_unauthenticated=True, allowed_hosts={*LOOPBACK_HOSTS, host.lower().strip("[]")}
    )
    return admin, "no credential configured: serving on loopback only, to this machine's users"


def serve(
    jobs: BackgroundJobs,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    bearer_token: str | None = None,
    basic_auth: str | None = None,
) -> None:
    """Serve the admin until SIGINT or SIGTERM."""
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise MissingDriverError(
            "the standalone admin server needs uvicorn: pip install 'asyncjobs[web]'"
        ) from None
    host = host.strip("[]")  # an IPv6 address as written in a URL: uvicorn binds it bare
    admin, protection = build_admin(jobs, host, bearer_token=bearer_token, basic_auth=basic_auth)
    jobs.execute = False  # this process shows and acts on jobs; workers run them
    shown = f"[{host}]" if ":" in host else host
    print(f"asyncjobs admin on http://{shown}:{port}/ ({protection})", file=sys.stderr, flush=True)

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own version raises the signal again once it stopped, which would end
            # the process before the jobs runtime closed; this one only stops the server.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    config: Any = uvicorn.Config(
        admin, host=host, port=port, lifespan="off", log_level="warning", access_log=False
    )
    server = Server(config)

    async def run() -> None:
        async with jobs:
            await server.serve()

    anyio.run(run)
