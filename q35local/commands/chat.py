"""`q35 chat`: load the model with the planner's layout (a progress bar while it loads), then the app."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from q35local.base.errors import InputError
from q35local.base.files import regular_file
from q35local.base.limits import CTX, DEFAULT_CTX
from q35local.base.settings import setting
from q35local.base.validate import int_arg

DEMO_MODEL = Path("demo/tiny-moe-Q8_0.gguf")
CONVERSATION_ID = (1, (1 << 63) - 1)  # SQLite's INTEGER PRIMARY KEY
# After the screen closes, how long a reply's thread still running (asked to stop) may take to return
# before the process exits without it: a stop is seen at the next token, well within this.
QUIT_GRACE_S = 0.5


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat in the terminal", description="A terminal chat with a GGUF model.")
    p.add_argument("model", type=Path, nargs="?", help="GGUF file (default: $Q35_MODEL, else the demo model)")
    p.add_argument("--mmproj", type=Path, help="vision projector (default: MODEL.mmproj.gguf if present)")
    p.add_argument(
        "--ctx",
        type=int_arg(*CTX),
        help=f"context length (default {DEFAULT_CTX}, or the model's trained context if shorter)",
    )
    p.add_argument("--think", dest="think", action="store_true", default=True, help="start in thinking mode")
    p.add_argument("--no-think", dest="think", action="store_false", help="start without thinking")
    p.add_argument("--system", help="system prompt")
    p.add_argument(
        "--resume", type=int_arg(*CONVERSATION_ID), metavar="ID", help="reopen a stored conversation"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print llama.cpp's output when the chat ends (always in its log)",
    )
    p.set_defaults(func=run_chat)


def _model(arg: Path | None) -> Path:
    """The GGUF to load: the argument, else $Q35_MODEL, else the demo model; a regular file."""
    if arg is not None:
        regular_file(arg, "no such GGUF file")
        return arg
    env = setting("Q35_MODEL")
    if env:
        model = Path(env)
        regular_file(model, "no such GGUF file (named by $Q35_MODEL)")
        return model
    if DEMO_MODEL.is_file():
        return DEMO_MODEL
    raise InputError(None, "q35 chat needs a MODEL.gguf (or run `make demo` to make the tiny one)")


def _system(text: str | None) -> str | None:
    """--system as given; None when empty. Bytes that are not UTF-8 arrive as lone surrogates, which
    neither the tokenizer nor the store can take: refused here, before anything loads."""
    if not text:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(text[e.start]) - 0xDC00  # what the surrogateescape decoding of argv kept
        shown = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else f"character {e.start}"
        raise InputError(None, f"--system: not valid UTF-8 text ({shown} at position {e.start})") from None
    return text


def run_chat(args: argparse.Namespace) -> int:
    from q35local.chat.store import Store
    from q35local.chat.template import template_for
    from q35local.engine.runtime import context_for, open_engine, read_model
    from q35local.model.profile import default_mmproj
    from q35local.tui.app import ChatApp, launch
    from quantize.gguf_file import mmproj_name

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError(None, "q35 chat needs a terminal; for a pipe or a script use q35 run -p PROMPT")
    system = _system(args.system)
    model = _model(args.model)
    if args.mmproj is not None:
        regular_file(args.mmproj, "no such mmproj file")
    mmproj = args.mmproj or default_mmproj(model)
    profile = read_model(model, mmproj)  # the headers, checked, before anything loads
    n_ctx = context_for(profile, model, args.ctx)
    store = Store()  # before the load: a bad data dir or database is one line, not a wasted load
    if args.resume is not None:
        store.conversation(args.resume)  # no such id: say so now
    # before the progress bar, which puts back the sys.stderr it found when it ends
    from q35local.engine import llamalog

    llamalog.route_stderr(echo=False)
    try:
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

            engine = open_engine(model, mmproj, n_ctx, profile, progress=progress)
    except BaseException:
        store.close()
        raise
    try:
        note = None if mmproj else f"no {mmproj_name(model).name} beside the model"
        app = ChatApp(
            engine,
            store,
            template_for(engine),
            think=args.think,
            system=system,
            conversation_id=args.resume,
            vision_note=note,
        )
        code = launch(app)
        if not app.wait_idle(QUIT_GRACE_S):
            _exit_leaving_a_stuck_reply(code, args.verbose)
        app.session.save_state()  # `q35 chat --resume ID` then reads only what is new
        return code
    finally:
        store.close()
        engine.close()
        _report(args.verbose)


def _report(verbose: bool) -> None:
    if verbose:
        from q35local.engine import llamalog

        print("\n".join(llamalog.this_run()), file=sys.stderr)
        print(f"(llama.cpp's log: {llamalog.log_path()})", file=sys.stderr)


def _exit_leaving_a_stuck_reply(code: int, verbose: bool) -> NoReturn:
    """The screen is closed but a reply's thread is still inside an engine call or a chat template
    that does not return (it was asked to stop). Python would wait for it at exit (the engine's
    thread is joined by concurrent.futures' exit hook) and closing the engine under it would free
    the model while llama.cpp still uses it, so the process ends here without either: every write
    to the conversation store is already committed (autocommit; its WAL is replayed on the next
    open), and the OS releases the model's memory and the GPU."""
    _report(verbose)
    print(
        "q35: a reply was still running when the chat closed; exited without waiting for it", file=sys.stderr
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
