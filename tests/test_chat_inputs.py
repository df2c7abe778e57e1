"""Bad inputs around the chat: chat templates too big to keep (at quantize time and in a GGUF), and the
`q35 chat` command line. Real checkpoints, real GGUFs, real files and FIFOs."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import gguf_for

from q35local.base.errors import InputError
from q35local.chat import template
from q35local.chat.store import Store
from q35local.chat.template import DEFAULT_TEMPLATE, TemplateError, template_for
from q35local.engine.llama import LlamaEngine
from quantize import metadata
from quantize.convert import ConvertOptions, convert


@pytest.fixture
def ckpt(moe_ckpt: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint, without its chat_template.jinja (each test says what it has)."""
    path = tmp_path / "ckpt"
    shutil.copytree(moe_ckpt, path)
    (path / "chat_template.jinja").unlink()
    return path


def quantize(ckpt: Path) -> Path:
    out = ckpt.parent / "out.gguf"
    convert(ConvertOptions(checkpoint=ckpt, output=out, quant="Q8_0", write_mmproj=False))
    return out


def set_config_template(ckpt: Path, value: object) -> None:
    path = ckpt / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["chat_template"] = value
    path.write_text(json.dumps(config), encoding="utf-8")


def refused(ckpt: Path) -> str:
    with pytest.raises(InputError) as e:
        quantize(ckpt)
    assert not (ckpt.parent / "out.gguf").exists()  # nothing half-written under the output's name
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- at quantize time ---


def test_a_chat_template_jinja_over_the_limit_is_refused(ckpt: Path) -> None:
    jinja = ckpt / "chat_template.jinja"
    jinja.write_text("x" * template.MAX_TEMPLATE_BYTES + "y", encoding="utf-8")
    limit = template.MAX_TEMPLATE_BYTES
    assert refused(ckpt) == f"{jinja}: is {limit + 1:,} bytes; at most {limit:,} are accepted"


def test_a_tokenizer_config_template_over_the_limit_is_refused(ckpt: Path) -> None:
    set_config_template(ckpt, "é" * (template.MAX_TEMPLATE_BYTES // 2 + 1))  # fewer characters than bytes
    size = template.MAX_TEMPLATE_BYTES + 2
    assert refused(ckpt) == (
        f"{ckpt / 'tokenizer_config.json'}: chat_template: chat template is {size:,} bytes; "
        f"at most {template.MAX_TEMPLATE_BYTES:,} (1 MiB) are accepted"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (42, "chat_template: expected a string, got int"),
        ({"default": "x"}, "chat_template: expected a string, got dict"),
        (
            [{"name": "tool_use", "template": "x"}],
            'chat_template: a list of templates needs one named "default"',
        ),
        ("ok \ud800 then", "chat_template: not valid Unicode (a lone surrogate at 3)"),
    ],
)
def test_a_tokenizer_config_template_of_the_wrong_kind_is_one_line(
    ckpt: Path, value: object, problem: str
) -> None:
    set_config_template(ckpt, value)
    assert refused(ckpt) == f"{ckpt / 'tokenizer_config.json'}: {problem}"


def test_the_default_of_a_list_of_templates_is_the_one_written(ckpt: Path) -> None:
    set_config_template(ckpt, [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}])
    from quantize.gguf_read import read_gguf

    assert read_gguf(quantize(ckpt)).get("tokenizer.chat_template") == "D"


def test_a_fifo_or_a_dangling_link_as_chat_template_jinja_is_refused_at_once(ckpt: Path) -> None:
    jinja = ckpt / "chat_template.jinja"
    os.mkfifo(jinja)  # reading it would block for good
    assert refused(ckpt) == f"{jinja}: is not a regular file (a FIFO)"
    jinja.unlink()
    jinja.symlink_to(ckpt / "gone.jinja")
    assert refused(ckpt) == f"{jinja}: no such file"


def test_the_limit_holds_when_the_tokenizer_keys_come_from_the_cache(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jinja = ckpt / "chat_template.jinja"
    jinja.write_text("{#" + "x" * (3 << 19) + "#}", encoding="utf-8")
    with monkeypatch.context() as m:  # an entry made under another limit (or before the check)
        m.setattr(metadata, "MAX_TEMPLATE_BYTES", 4 << 20)
        quantize(ckpt).unlink()
    size = jinja.stat().st_size
    limit = template.MAX_TEMPLATE_BYTES
    assert refused(ckpt) == f"{jinja}: is {size:,} bytes; at most {limit:,} are accepted"


# --- in a GGUF: llama.cpp hands back the whole value, however long ---


def test_a_template_over_a_mebibyte_is_read_whole_then_refused_by_name(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = "{#" + "x" * (3 << 19) + "#}" + DEFAULT_TEMPLATE  # 1.5 MiB: more than the old 1 MiB buffer
    (ckpt / "chat_template.jinja").write_text(big, encoding="utf-8")
    with monkeypatch.context() as m:  # a GGUF made elsewhere: our own quantize would refuse it
        m.setattr(metadata, "MAX_TEMPLATE_BYTES", 4 << 20)
        gguf = quantize(ckpt)
    engine = LlamaEngine(gguf, n_ctx=256)
    try:
        assert engine.info.chat_template == big  # not cut at 1 MiB
        with pytest.raises(TemplateError) as e:
            template_for(engine)
        assert str(e.value) == (
            f"{gguf} (tokenizer.chat_template): chat template is {len(big):,} bytes; "
            f"at most {template.MAX_TEMPLATE_BYTES:,} (1 MiB) are accepted"
        )
    finally:
        engine.close()


def test_the_tiny_models_own_template_still_reads(moe_ckpt: Path) -> None:
    engine = LlamaEngine(gguf_for(moe_ckpt, "Q8_0"), n_ctx=256)
    try:
        assert engine.info.chat_template == (moe_ckpt / "chat_template.jinja").read_text(encoding="utf-8")
    finally:
        engine.close()


# --- `q35 chat`, run in a terminal (a pty) ---

ROOT = Path(__file__).parents[1]

# `q35 chat` as it runs (q35local.cli.main), with the scripted engine in place of llama.cpp and the app
# driven headless by a pilot: a reply whose engine call never returns, then ctrl+q.
STUCK_CHAT = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, sys.argv[1])
    from fake_engine import FakeEngine
    import q35local.engine.runtime as runtime
    import q35local.tui.app as tui_app
    import q35local.chat.template as template_module
    from q35local.chat.template import ChatTemplate

    class Stuck(FakeEngine):
        def _stream(self, call, script):
            yield "thinking hard"
            threading.Event().wait()  # an engine call that never returns, whatever stop says

    runtime.open_engine = lambda *a, **k: Stuck()
    template_module.template_for = lambda engine: ChatTemplate.default()

    async def pilot(p):
        app = p.app
        app.prompt.text = "hi"
        app.prompt.focus()
        await p.press("enter")
        while app.first_token_at is None:
            await p.pause(0.02)
        await p.press("ctrl+q")

    def launch(app):
        app.run(headless=True, auto_pilot=pilot)
        return app.return_code or 0

    tui_app.launch = launch
    from q35local.cli import main
    sys.exit(main(["chat", sys.argv[2], "--no-think"]))
    """
)


def chat_in_a_terminal(args: list, timeout: float = 60, **env: str) -> tuple[int, str, float]:
    """Run `args` with stdin and stdout on a pty (q35 chat wants a terminal); (code, stderr, seconds)."""
    leader, follower = pty.openpty()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        args, stdin=follower, stdout=follower, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, **env}
    )
    os.close(follower)
    drain = threading.Thread(target=_read_all, args=(leader,), daemon=True)  # a full pty would block it
    drain.start()
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(
            f"still running after {timeout} s; stderr: {err.decode(errors='replace')}"
        ) from None
    finally:
        os.close(leader)
    return proc.returncode, err.decode("utf-8", errors="replace"), time.monotonic() - t0


def _read_all(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass


def test_quitting_with_a_reply_stuck_in_the_engine_still_ends_the_process(
    moe_ckpt: Path, tmp_path: Path
) -> None:
    model = gguf_for(moe_ckpt, "Q8_0")  # read for its header only; the engine is the scripted one
    tests = str(Path(__file__).parent)
    code, err, took = chat_in_a_terminal(
        [sys.executable, "-c", STUCK_CHAT, tests, str(model)], Q35_DATA_DIR=str(tmp_path / "data")
    )
    assert code == 0, err
    assert "q35: a reply was still running when the chat closed; exited without waiting for it" in err
    assert took < 20  # start-up and imports; the exit itself waits QUIT_GRACE_S
    conv = Store(tmp_path / "data" / "chats.sqlite3")
    try:
        (row,) = conv.conversations()
        assert [(m.role, m.content) for m in conv.messages(row.id)] == [
            ("user", "hi"),
            ("assistant", "thinking hard"),  # what had streamed was kept
        ]
    finally:
        conv.close()


def q35_chat(*args: str | bytes, **env: str) -> tuple[int, str]:
    code, err, _ = chat_in_a_terminal([sys.executable, "-m", "q35local.cli", "chat", *args], **env)
    assert "\n" not in err.strip(), err  # one line
    return code, err.strip()


def test_chat_arguments_are_checked_before_anything_loads(moe_ckpt: Path, tmp_path: Path) -> None:
    model = str(gguf_for(moe_ckpt, "Q8_0"))
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    cases: list[tuple[tuple[str | bytes, ...], dict[str, str], str]] = [
        (
            (model, b"--system", b"be \xff brief"),
            {},
            "q35: error: --system: not valid UTF-8 text (byte 0xff at position 3)",
        ),
        ((), {"Q35_MODEL": str(fifo)}, f"q35: error: {fifo}: is not a regular file (a FIFO)"),
        (
            (),
            {"Q35_MODEL": str(tmp_path / "gone.gguf")},
            f"q35: error: {tmp_path / 'gone.gguf'}: no such GGUF file (named by $Q35_MODEL)",
        ),
        ((model, "--mmproj", str(tmp_path)), {}, f"q35: error: {tmp_path}: is a folder, not a file"),
        ((model, "--resume", "7"), {}, "no conversation with id 7"),
        ((model, "--resume", "0"), {}, "--resume: must be ≥ 1 and ≤ 9,223,372,036,854,775,807, got 0"),
        (
            (model, "--resume", str(1 << 63)),
            {},
            "--resume: must be ≥ 1 and ≤ 9,223,372,036,854,775,807, got 9223372036854775808",
        ),
        ((model, "--ctx", "12"), {}, "--ctx: must be ≥ 256"),
    ]
    for args, env, needle in cases:
        code, err = q35_chat(*args, Q35_DATA_DIR=str(tmp_path / "data"), **env)
        assert code != 0 and needle in err, (args, env, err)
