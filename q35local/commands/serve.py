"""`q35 serve`: an OpenAI-compatible server on the engine, plan and loader `q35 chat` uses."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from q35local.base.errors import InputError
from q35local.base.limits import CTX, DEFAULT_CTX, PORT, THREADS
from q35local.base.settings import setting
from q35local.base.validate import int_arg

DEFAULT_PORT = 8035


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server (/v1/chat/completions)",
        description="Serve a GGUF over OpenAI's chat completions API (streaming, thinking, tools, images).",
    )
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("--mmproj", type=Path, help="vision projector (default: MODEL.mmproj.gguf if present)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int_arg(*PORT), default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--ctx",
        type=int_arg(*CTX),
        help=f"context length (default {DEFAULT_CTX}, or the model's trained context if shorter)",
    )
    p.add_argument("--threads", type=int_arg(*THREADS), help="CPU threads (default: the physical cores)")
    p.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` (default: $Q35_API_KEY; others can read a command line)",
    )
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's output (always in its log file)")
    p.set_defaults(func=run_serve)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from q35local.chat.template import template_for
    from q35local.engine.runtime import context_for, open_engine, read_model
    from q35local.model.profile import default_mmproj
    from q35local.server.app import Served, create_app

    key = args.api_key if args.api_key is not None else setting("Q35_API_KEY")
    if key is not None and not key.strip():
        raise InputError(None, "--api-key: an empty key would let anyone in; give one, or none")
    mmproj = args.mmproj or default_mmproj(args.model)
    profile = read_model(args.model, mmproj)
    n_ctx = context_for(profile, args.model, args.ctx)
    engine = open_engine(args.model, mmproj, n_ctx, profile, threads=args.threads, verbose=args.verbose)
    try:
        served = Served(engine, template_for(engine), args.model.name.removesuffix(".gguf"), key)
        where = f"http://{args.host}:{args.port}/v1"
        print(
            f"q35 serve: {served.model_id} ({engine.info.quant}, {engine.info.layout}, {n_ctx:,} tokens of "
            f"context{', vision' if engine.info.has_vision else ''}) on {where}",
            file=sys.stderr,
            flush=True,
        )
        if not _loopback(args.host) and key is None:
            print(
                f"q35 serve: warning: listening on {args.host} without --api-key: "
                "anyone who can reach it may use it",
                file=sys.stderr,
                flush=True,
            )
        config = uvicorn.Config(create_app(served), host=args.host, port=args.port, log_level="warning")
        server = uvicorn.Server(config)
        try:
            server.run()
        except KeyboardInterrupt:  # uvicorn has shut down cleanly, then passes the signal on
            print("q35 serve: stopped", file=sys.stderr)
            return 0
        except OSError as e:  # the port is taken, or the address is not this machine's
            raise InputError(
                None, f"--host {args.host} --port {args.port}: cannot listen ({e.strerror or e})"
            ) from None
        return 0 if server.started else 1
    finally:
        engine.close()
