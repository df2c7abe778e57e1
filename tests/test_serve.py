"""`q35 serve` as a client sees it: a real server process on 127.0.0.1, driven by the real OpenAI
client (and by raw HTTP where a client would refuse to send the bad input)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from conftest import gguf_for
from PIL import Image

KEY = "test-key-" + "x" * 16
CTX = 2048


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tiny(moe_ckpt: Path) -> Path:
    return gguf_for(moe_ckpt, "Q8_0")  # with its projector beside it (MODEL.mmproj.gguf)


@pytest.fixture(scope="module")
def server(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "q35local.cli",
                "serve",
                str(tiny),
                "--port",
                str(port),
                "--ctx",
                str(CTX),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "Q35_API_KEY": KEY},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "q35 serve did not come up: " + log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "q35 serve:" in log.read_text()  # the start line: model, layout, context, address


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def _stream_turn(client: openai.OpenAI, messages: list[dict[str, Any]], **kw: Any) -> tuple[str, str, Any]:
    """(answer, reasoning, usage) of one streamed turn."""
    answer, reasoning, usage = [], [], None
    stream = client.chat.completions.create(
        model="q35", messages=messages, stream=True, stream_options={"include_usage": True}, **kw
    )
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            answer.append(c.delta.content or "")
            reasoning.append(getattr(c.delta, "reasoning_content", None) or "")
    return "".join(answer), "".join(reasoning), usage


def test_models_and_health(server: str, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny-moe-Q8_0"] or ids == [Path(ids[0]).name]
    with urllib.request.urlopen(f"{server}/health") as r:  # no key needed for a health check
        assert json.load(r) == {"status": "ok"}


def test_a_streamed_conversation_reuses_its_history(client: openai.OpenAI) -> None:
    """Thinking on, streamed: every follow-up turn reports the history as cached tokens."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Tell me about the sea."}]
    previous = None
    for turn in range(4):
        answer, _, usage = _stream_turn(client, messages, max_tokens=24, seed=turn)
        assert usage is not None and usage.completion_tokens > 0
        cached = usage.prompt_tokens_details.cached_tokens
        if previous is None:
            assert cached == 0
        else:
            # everything but the last reply, the new message and the tokens around them
            assert cached >= previous.prompt_tokens - 8
            assert usage.prompt_tokens - cached < previous.completion_tokens + 40
        previous = usage
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": f"And what about river number {turn}?"},
        ]


def test_a_whole_reply_with_and_without_thinking(client: openai.OpenAI) -> None:
    msg = [{"role": "user", "content": "Hello!"}]
    on = client.chat.completions.create(model="q35", messages=msg, max_tokens=16, seed=1)
    off = client.chat.completions.create(
        model="q35",
        messages=msg,
        max_tokens=16,
        seed=1,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert on.object == "chat.completion" and on.choices[0].finish_reason in ("stop", "length")
    assert on.usage is not None and off.usage is not None
    # thinking off closes an empty <think></think> in the prompt: a few tokens more, no reasoning
    assert off.usage.prompt_tokens > on.usage.prompt_tokens
    assert not getattr(off.choices[0].message, "reasoning_content", None)


def _png_data_url(size: tuple[int, int] = (96, 128)) -> str:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_an_image_as_a_data_url_goes_through_the_projector(client: openai.OpenAI) -> None:
    text = client.chat.completions.create(
        model="q35", messages=[{"role": "user", "content": "What is this?"}], max_tokens=4
    )
    image = client.chat.completions.create(
        model="q35",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _png_data_url()}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
        max_tokens=4,
    )
    assert text.usage is not None and image.usage is not None
    assert image.usage.prompt_tokens > text.usage.prompt_tokens + 4  # the image's positions


def test_a_conversation_that_opened_with_an_image_reuses_it(client: openai.OpenAI) -> None:
    first = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": _png_data_url((80, 120))}},
            {"type": "text", "text": "What is in this picture?"},
        ],
    }
    messages: list[dict[str, Any]] = [first]
    previous = None
    for turn in range(3):
        answer, _, usage = _stream_turn(client, messages, max_tokens=16, seed=turn)
        assert usage is not None
        if previous is not None:  # the image and everything up to the last message: not read again
            assert usage.prompt_tokens_details.cached_tokens >= previous.prompt_tokens - 8
        previous = usage
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"And {turn}?"}]


def test_two_clients_at_once_are_both_answered(server: str) -> None:
    results: list[Any] = []

    def ask(i: int) -> None:
        c = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)
        r = c.chat.completions.create(
            model="q35", messages=[{"role": "user", "content": f"Client {i} says hi."}], max_tokens=12
        )
        results.append(r)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 2 and all(r.usage.completion_tokens > 0 for r in results)


def test_a_client_that_disconnects_frees_the_engine(client: openai.OpenAI) -> None:
    """A stream closed after three chunks stops its generation: the next request waits for at most a
    token of it, not for the ~1,900 tokens it asked for."""
    story = [{"role": "user", "content": "Write a very long story."}]
    t0 = time.monotonic()
    base = client.chat.completions.create(model="q35", messages=story, max_tokens=200, seed=5)
    t200 = time.monotonic() - t0  # what 200 tokens take here
    assert base.usage is not None and base.usage.completion_tokens == 200
    stream = client.chat.completions.create(model="q35", messages=story, stream=True, max_tokens=1900, seed=5)
    for got, _ in enumerate(stream, 1):
        if got >= 3:
            break
    stream.close()  # the connection goes; the server's generation stops at its next token
    t0 = time.monotonic()
    r = client.chat.completions.create(model="q35", messages=USER, max_tokens=4)
    assert r.usage is not None
    assert time.monotonic() - t0 < 3 * t200  # the rest of the story would take ~9 × t200


# --- bad input: OpenAI-style error JSON with a 4xx, and the server keeps serving ---


def _post(
    server: str, body: bytes, key: str | None = KEY, path: str = "/v1/chat/completions"
) -> tuple[int, Any]:
    req = urllib.request.Request(f"{server}{path}", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _chat(**fields: Any) -> bytes:
    return json.dumps({"model": "q35", "max_tokens": 4, **fields}).encode()


USER = [{"role": "user", "content": "hi"}]
NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"hello world").decode()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "request body"),
        (b"[1, 2]", 400, ""),
        (_chat(messages="hello"), 400, "messages"),
        (_chat(messages=[]), 400, "messages"),
        (_chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "wizard"),
        (_chat(messages=[{"role": "user", "content": 42}]), 400, "messages[0].content"),
        (_chat(messages=USER, temperature="hot"), 400, "temperature"),
        (_chat(messages=USER, max_tokens=-3), 400, "max_tokens"),
        (
            _chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}],
                    }
                ]
            ),
            400,
            "data: URL",
        ),
        (
            _chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": NOT_AN_IMAGE},
                            }
                        ],
                    }
                ]
            ),
            400,
            "image_url",
        ),
        (_chat(messages=[{"role": "user", "content": "word " * (CTX + 100)}]), 400, "context"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "not-an-object",
        "messages-a-string",
        "no-messages",
        "unknown-role",
        "content-a-number",
        "temperature-a-string",
        "negative-max-tokens",
        "remote-image",
        "not-an-image",
        "over-the-context",
    ],
)
def test_bad_requests_get_a_4xx_with_an_error_body(
    server: str, body: bytes, status: int, needle: str
) -> None:
    code, reply = _post(server, body)
    assert code == status, reply
    err = reply["error"]
    assert needle in err["message"] and err["type"] and "\n" not in err["message"]
    assert _post(server, _chat(messages=USER))[0] == 200  # and the next request is served


def test_the_api_key_is_required_on_the_api(server: str) -> None:
    for key in (None, "wrong", KEY + "x"):
        code, reply = _post(server, _chat(messages=USER), key=key)
        assert code == 401 and reply["error"]["type"] == "authentication_error"
    req = urllib.request.Request(f"{server}/v1/models")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 401


def test_unknown_paths_and_methods_get_json_errors(server: str) -> None:
    code, reply = _post(server, b"{}", path="/v1/completions_typo")
    assert code == 404 and "error" in reply
    req = urllib.request.Request(f"{server}/v1/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 405 and "error" in json.loads(e.value.read())


def test_a_body_over_the_limit_is_refused_from_its_header(server: str) -> None:
    """A client declaring 10 GB is answered 413 before the server reads (or waits for) any of it."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 10000000000\r\n\r\n".encode()
        )
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            got += part
    head, _, body = got.decode(errors="replace").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert "at most 100 MB" in json.loads(body)["error"]["message"]


def test_ctrl_c_stops_the_server_cleanly(tiny: Path, tmp_path: Path) -> None:
    """SIGINT, as ctrl+c sends it to the whole process group: one line, exit 0, no traceback (the log
    reader child ignores it and ends with its pipe)."""
    import signal

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "q35local.cli", "serve", str(tiny), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that the signal reaches only it and its child
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "q35 serve: stopped"
