"""`python -m sparsegate.backends.sim` and `sparsegate sim`: run one simulated worker until interrupted."""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn

from .app import create_app
from .config import SimConfig, parse_config
from .state import SimState

# Streams may be open when SIGTERM arrives; don't let them hold the process for long.
GRACEFUL_SHUTDOWN_S = 2


class _SimServer(uvicorn.Server):
    """uvicorn, plus: on SIGINT/SIGTERM end the requests in flight, so their streams close cleanly.

    uvicorn waits for open connections before the app's lifespan shutdown runs, and then cancels them
    with a traceback; ending the streams first (error event, then `[DONE]`) avoids both.
    """

    def __init__(self, config: uvicorn.Config, state: SimState) -> None:
        """Build it inside the running loop that will serve it."""
        super().__init__(config)
        self._state = state
        self._loop = asyncio.get_running_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's own handling, then stop the engine's requests from the loop (signal handlers can't await)."""
        super().handle_exit(sig, frame)
        self._loop.call_soon_threadsafe(self._state.engine.stop_all, "shutdown")


def main(argv: list[str] | None = None) -> int:
    """Parse the flags (the argv after `sim`), serve until SIGINT/SIGTERM, and return the exit status."""
    try:
        config = parse_config(argv)
        return asyncio.run(serve(config))
    except SystemExit as exc:  # argparse on bad flags or --help, uvicorn when the port is taken
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt:
        return 130


async def serve(config: SimConfig) -> int:
    """Serve `config` with uvicorn; prints one line once the socket listens (with the real port if 0)."""
    state = SimState.build(config)
    server = _SimServer(
        uvicorn.Config(
            create_app(config, state=state),
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ),
        state,
    )
    serving = asyncio.ensure_future(server.serve())
    # uvicorn offers only a flag for "listening", no event to await.
    while not server.started and not serving.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else config.port
        print(
            f"sparsegate sim: serving {config.model!r} (context {config.max_context}) on http://{config.host}:{port}",
            flush=True,
        )
    await serving
    return 0 if server.started else 1
