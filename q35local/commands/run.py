"""`q35 run`: the chat engine without the screen; one prompt in, the answer out."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from q35local.base.limits import CTX, DEFAULT_CTX, MAX_TOKENS, SEED, TEMPERATURE, THREADS
from q35local.base.validate import float_arg, int_arg
from q35local.engine.sampling import recommended


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="answer one prompt (no screen)", description="Answer one prompt headless.")
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("-p", "--prompt", required=True, help="the user message")
    p.add_argument("--image", type=Path, action="append", default=[], help="attach an image (repeatable)")
    p.add_argument("--mmproj", type=Path, help="vision projector (default: MODEL.mmproj.gguf if present)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--think", dest="think", action="store_true", default=True, help="thinking mode (default)")
    p.add_argument("--no-think", dest="think", action="store_false", help="answer without thinking")
    p.add_argument(
        "-n",
        "--max-tokens",
        type=int_arg(*MAX_TOKENS),
        default=1024,
        help="tokens to generate, default 1024",
    )
    p.add_argument("--seed", type=int_arg(*SEED), help=f"sampling seed, {SEED[0]} to {SEED[1]:,}")
    p.add_argument(
        "--temperature",
        type=float_arg(*TEMPERATURE),
        help=f"override the mode's recommended temperature ({TEMPERATURE[0]:g} to {TEMPERATURE[1]:g})",
    )
    p.add_argument(
        "--ctx",
        type=int_arg(*CTX),
        help=f"context length (default {DEFAULT_CTX}, or the model's trained context if shorter)",
    )
    p.add_argument("--threads", type=int_arg(*THREADS), help="CPU threads (default: the physical cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's output (always in its log file)")
    p.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    from q35local.chat.session import AnswerDelta, ChatSession, Done, Error, ThinkingDelta
    from q35local.chat.template import template_for
    from q35local.engine.runtime import context_for, open_engine, read_model
    from q35local.model.profile import default_mmproj

    mmproj = args.mmproj or default_mmproj(args.model)
    profile = read_model(args.model, mmproj)  # the headers, checked, before anything loads
    n_ctx = context_for(profile, args.model, args.ctx)
    engine = open_engine(args.model, mmproj, n_ctx, profile, threads=args.threads, verbose=args.verbose)
    try:
        sampling = replace(recommended(args.think), max_tokens=args.max_tokens, seed=args.seed)
        if args.temperature is not None:
            sampling = replace(sampling, temperature=args.temperature)
        session = ChatSession(
            engine, None, template_for(engine), think=args.think, sampling=sampling, system=args.system
        )
        thinking: list[str] = []
        answer: list[str] = []
        stats = None
        show = not args.json
        for ev in session.send(args.prompt, args.image):
            if isinstance(ev, ThinkingDelta):
                thinking.append(ev.text)
                if show:
                    sys.stderr.write(ev.text)
                    sys.stderr.flush()
            elif isinstance(ev, AnswerDelta):
                if show and thinking and not answer:
                    sys.stderr.write("\n")
                answer.append(ev.text)
                if show:
                    sys.stdout.write(ev.text)
                    sys.stdout.flush()
            elif isinstance(ev, Done):
                stats = ev.stats
            elif isinstance(ev, Error):
                print(f"q35: error: {ev.message}", file=sys.stderr)
                return 1
        if args.json:
            assert stats is not None
            print(
                json.dumps(
                    {
                        "text": "".join(answer),
                        "thinking": "".join(thinking),
                        "prompt_tokens": stats.prompt_tokens,
                        "completion_tokens": stats.completion_tokens,
                        "prefill_tps": round(stats.prefill_tps, 2),
                        "decode_tps": round(stats.decode_tps, 2),
                        "finish": stats.finish,
                    },
                    ensure_ascii=False,
                )
            )
        elif answer:
            print()
        return 0
    finally:
        engine.close()
