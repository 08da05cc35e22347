"""`sparsegate`: run the gateway, run a simulated worker, hash an API key for the config, or use the admin API."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import uvicorn

from sparsegate.gateway.admin.cli import add_parser as add_admin
from sparsegate.gateway.observability.logs import configure_logging
from sparsegate.gateway.settings import ConfigError, hash_api_key, load_settings

log = logging.getLogger("sparsegate.cli")


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    from sparsegate.gateway.app import create_app
    from sparsegate.gateway.defaults import DEMO_API_KEY, DEMO_MODEL, demo_settings, demo_workers

    configure_logging(args.log_level)
    # uvicorn re-raises SIGTERM once it has shut down; with the default handler that would kill the process
    # before the demo's simulated workers are stopped. Turning it into SystemExit lets the cleanup run.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if args.workers < 1:
        print("sparsegate: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and args.config is None:
        print(
            "sparsegate: --workers > 1 needs a config with redis_url: the embedded demo uses the in-memory limiter",
            file=sys.stderr,
        )
        return 2
    if args.config is not None:
        try:
            settings = load_settings(args.config)
        except ConfigError as exc:
            print(f"sparsegate: {exc}", file=sys.stderr)
            return 2
        if args.workers > 1:
            if settings.effective_redis_url is None:
                print(
                    f"sparsegate: --workers {args.workers} needs redis_url: the in-memory limiter lives in one "
                    f"process, so {args.workers} processes would each admit the full limits",
                    file=sys.stderr,
                )
                return 2
            if settings.metrics_port is not None:
                print(
                    "sparsegate: metrics_port cannot be shared by several processes; with --workers > 1 scrape "
                    "/metrics with an admin key (it answers for every process)",
                    file=sys.stderr,
                )
                return 2
            from sparsegate.gateway.supervisor import Supervisor

            return Supervisor(_child_argv(args), args.workers).run()
        app = create_app(settings, config_path=args.config, metrics_dir=args.metrics_dir)
        log.info("gateway on http://%s:%d (config %s)", args.host, args.port, args.config)
        _run(app, args)
        return 0

    with demo_workers() as urls:
        settings = demo_settings(urls)
        app = create_app(settings)
        base = f"http://{args.host}:{args.port}"
        # The demo key is public (README): the one key a log line may name, so the banner can be copied.
        try_it = (
            f"curl {base}/v1/chat/completions -H 'Authorization: Bearer {DEMO_API_KEY}' "
            f'-H \'Content-Type: application/json\' -d \'{{"model": "{DEMO_MODEL}", '
            '"messages": [{"role": "user", "content": "Hello"}]}\''
        )
        log.info(
            "embedded demo gateway on %s (in-memory limiter); try: %s",
            base,
            try_it,
            extra={"fields": {"pools": urls, "limiter": "in-memory"}},
        )
        _run(app, args)
    return 0


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The command line of one supervised gateway process: the same serve, on a shared port."""
    argv = ["serve", "--config", str(args.config), "--host", args.host, "--port", str(args.port)]
    argv += ["--log-level", args.log_level, "--graceful-timeout", str(args.graceful_timeout), "--loop", args.loop]
    return [*argv, "--reuse-port"]


def _run(app: Any, args: argparse.Namespace) -> None:
    from sparsegate.gateway.http_protocol import BoundedHeadersProtocol

    # On SIGTERM, streams in flight get `--graceful-timeout` seconds to finish; then they are cancelled, which
    # aborts them on their workers and settles their limits like any disconnect. `workers=1` is explicit so that a
    # WEB_CONCURRENCY in the environment cannot make uvicorn ask for an import string (it exits with code 3).
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,  # uvicorn's loggers propagate to the one JSON handler (configure_logging)
        access_log=False,
        timeout_graceful_shutdown=args.graceful_timeout,
        loop=args.loop,
        workers=1,
        proxy_headers=False,  # nothing reads the client's address; the middleware costs on every request
        server_header=False,
        http=BoundedHeadersProtocol,  # oversized headers: 431 in OpenAI's envelope
    )
    server = uvicorn.Server(config)
    if args.reuse_port:
        from sparsegate.gateway.supervisor import reuse_port_socket

        server.run(sockets=[reuse_port_socket(args.host, args.port)])
    else:
        server.run()


def _hash_key(args: argparse.Namespace) -> int:
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        print("sparsegate: no key given", file=sys.stderr)
        return 2
    print(hash_api_key(key))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sim":
        from sparsegate.backends.sim.cli import main as sim_main

        code: int = sim_main(argv[1:])
        return code
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (the embedded demo when no --config is given)")
    serve.add_argument("--config", type=Path, default=None, help="YAML config file (see README)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds streams get to finish on SIGTERM")
    serve.add_argument(
        "--workers", type=int, default=1, help="gateway processes on the port (SO_REUSEPORT); > 1 needs redis_url"
    )
    serve.add_argument(
        "--loop", default="auto", choices=["auto", "uvloop", "asyncio"], help="event loop (auto: uvloop)"
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set by the supervisor
    serve.add_argument("--metrics-dir", default=None, help=argparse.SUPPRESS)  # set by the supervisor
    serve.set_defaults(func=_serve)
    sub.add_parser("sim", help="run one simulated SGLang worker (see `sparsegate sim --help`)")
    hk = sub.add_parser("hash-key", help="print the sha256:<hex> form of an API key for the config")
    hk.add_argument("key", nargs="?", help="the key (read from stdin when omitted, to keep it out of shell history)")
    hk.set_defaults(func=_hash_key)
    add_admin(sub)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
