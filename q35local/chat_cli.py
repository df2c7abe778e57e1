"""`q35 chat`: load the model with the planner's layout (a progress bar while it loads), then the app."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from quantize.errors import InputError

DEMO_MODEL = Path("demo/tiny-moe-Q8_0.gguf")


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat in the terminal", description="A terminal chat with a GGUF model.")
    p.add_argument("model", type=Path, nargs="?", help="GGUF file (default: $Q35_MODEL, else the demo model)")
    p.add_argument("--mmproj", type=Path, help="vision projector (default: MODEL.mmproj.gguf if present)")
    p.add_argument("--ctx", type=int, default=8192, help="context length (default 8192)")
    p.add_argument("--think", dest="think", action="store_true", default=True, help="start in thinking mode")
    p.add_argument("--no-think", dest="think", action="store_false", help="start without thinking")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--resume", type=int, metavar="ID", help="reopen a stored conversation")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print llama.cpp's output when the chat ends (always in its log)",
    )
    p.set_defaults(func=run_chat)


def _model(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("Q35_MODEL")
    if env:
        return Path(env)
    if DEMO_MODEL.is_file():
        return DEMO_MODEL
    raise InputError(None, "q35 chat needs a MODEL.gguf (or run `make demo` to make the tiny one)")


def run_chat(args: argparse.Namespace) -> int:
    from .modelprofile import default_mmproj
    from .runtime import open_engine, template_for
    from .store import Store
    from .tui.app import ChatApp, launch

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError(None, "q35 chat needs a terminal; for a pipe or a script use q35 run -p PROMPT")
    model = _model(args.model)
    mmproj = args.mmproj or default_mmproj(model)
    # before the progress bar, which puts back the sys.stderr it found when it ends
    from . import llamalog

    llamalog.route_stderr(echo=False)
    with Progress(
        TextColumn(f"loading {model.name}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("load", total=1.0)

        def progress(x: float) -> bool:
            bar.update(task, completed=x)
            return True

        engine = open_engine(model, mmproj, args.ctx, progress=progress)
    store = Store()
    try:
        note = None if mmproj else f"no {model.name.removesuffix('.gguf')}.mmproj.gguf beside the model"
        app = ChatApp(
            engine,
            store,
            template_for(engine),
            think=args.think,
            system=args.system,
            conversation_id=args.resume,
            vision_note=note,
        )
        return launch(app)
    finally:
        store.close()
        engine.close()
        if args.verbose:
            print("\n".join(llamalog.this_run()), file=sys.stderr)
            print(f"(llama.cpp's log: {llamalog.log_path()})", file=sys.stderr)
