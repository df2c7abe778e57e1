"""`q35 serve`'s HTTP side: OpenAI's chat completions on the engine `q35 chat` uses.

Starlette routes the requests and uvicorn serves them; the protocol (what a request may say, what a
response looks like) is server/protocol.py, and this module only joins it to the engine. The engine
holds one sequence: requests take it in arrival order (an asyncio.Lock is FIFO), at most
MAX_WAITING wait, and a client that goes away stops its generation at the next token. Every
follow-up request reuses the engine's state snapshots, so `usage.prompt_tokens_details.cached_tokens`
tells the client how much of the conversation was not read again.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from q35local.base.errors import InputError
from q35local.base.units import MB, format_size
from q35local.chat.template import ChatTemplate, opens_thinking
from q35local.chat.thinking import ThinkSplitter
from q35local.chat.tools import ToolCall, ToolCallStream
from q35local.engine.llama import EngineError, LlamaEngine
from q35local.server.protocol import (
    ApiError,
    ChatRequest,
    chunk,
    completion,
    models_list,
    parse_chat_request,
    tool_call_json,
    usage,
)

MAX_BODY_BYTES = 100 * MB  # a request with images as data URLs (base64: 4/3 of each image file)
MAX_WAITING = 64  # requests queued behind the one generating; more are told to come back (429)
PING_S = 15  # SSE comment lines while a long prefill runs, so that proxies keep the stream open
_DONE = object()
log = logging.getLogger("q35.serve")


@dataclass
class Served:
    """What the routes share: the engine (one sequence), its template, the model's name, the key."""

    engine: LlamaEngine
    template: ChatTemplate
    model_id: str
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    waiting: int = 0
    _lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:  # made on the server's event loop, at the first request
            self._lock = asyncio.Lock()
        return self._lock


def create_app(served: Served) -> Starlette:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        _authorize(served, request)
        return JSONResponse(models_list(served.model_id, served.created))

    async def chat_completions(request: Request) -> Response:
        _authorize(served, request)
        body = await _read_json(request)
        budget = served.engine.info.image_budget  # (images are decoded and scaled off the event loop)
        req = await anyio.to_thread.run_sync(lambda: parse_chat_request(body, image_budget=budget))
        if req.tool_choice not in (None, "auto", "none"):
            raise ApiError(
                400,
                f"tool_choice: {json.dumps(req.tool_choice)} is not supported: q35 does not constrain "
                'decoding to a call; use "auto" (the model decides) or "none"',
                param="tool_choice",
            )
        prompt = _render(served, req)
        n_prompt = await anyio.to_thread.run_sync(served.engine.count_tokens, prompt)
        if n_prompt >= served.engine.n_ctx:
            raise ApiError(
                400,
                f"messages: the prompt is {n_prompt:,} tokens; this server's context holds "
                f"{served.engine.n_ctx:,} (start `q35 serve` with a larger --ctx, or send less)",
                param="messages",
                code="context_length_exceeded",
            )
        if served.waiting >= MAX_WAITING:
            raise ApiError(
                429, f"{MAX_WAITING} requests are waiting already; try again shortly", type="server_busy"
            )
        turn = _Turn(served, req, prompt)
        if req.stream:
            return EventSourceResponse(turn.stream(), ping=PING_S)
        return JSONResponse(await turn.whole(request))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        what = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(ApiError(exc.status_code, what, type=kind).body(), status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("q35 serve: %s %s failed", request.method, request.url.path)
        body = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
    )


def _authorize(served: Served, request: Request) -> None:
    if served.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, key = given.partition(" ")
    # compare_digest: the time taken does not tell how much of a guessed key was right
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), served.api_key.encode()):
        raise ApiError(
            401, "missing or wrong API key (send Authorization: Bearer KEY)", type="authentication_error"
        )


async def _read_json(request: Request) -> object:
    """The body as JSON, read up to MAX_BODY_BYTES (a longer one is refused before it is all in)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(
            413, f"request body: {format_size(int(declared))}; at most {format_size(MAX_BODY_BYTES)}"
        )
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body: more than {format_size(MAX_BODY_BYTES)}")
        parts.append(part)
    raw = b"".join(parts)
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "request body: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"request body: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    except RecursionError:
        raise ApiError(400, "request body: not valid JSON (nested too deeply)") from None


def _render(served: Served, req: ChatRequest) -> str:
    tools = req.tools if req.tools and req.tool_choice != "none" else None
    try:
        return served.template.render(req.messages, enable_thinking=req.think, tools=tools)
    except InputError as e:  # the template refused these messages (raise_exception, its budget)
        raise ApiError(400, f"messages: {e}", param="messages") from None


class _Reply:
    """A generation's text, as it arrives, into OpenAI's deltas: the thinking (`reasoning_content`),
    the answer cut at the first stop string (`content`), and tool calls parsed out of the answer."""

    def __init__(self, req: ChatRequest, prompt: str) -> None:
        self.splitter = ThinkSplitter(opens_thinking(prompt))
        self.stops = [s for s in req.stop if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.answer = ""  # answer text not yet let out (it may be the start of a stop string)
        self.tools = ToolCallStream(req.tools) if req.tools and req.tool_choice != "none" else None
        self.stopped = False  # a stop string ended it
        self.calls: list[ToolCall] = []
        self.parallel = req.parallel_tool_calls

    def feed(self, piece: str) -> list[dict[str, Any]]:
        return self._segments(self.splitter.feed(piece), final=False)

    def finish(self) -> list[dict[str, Any]]:
        out = self._segments(self.splitter.flush(), final=True)
        if self.tools is not None:
            out += self._tool_deltas(self.tools.close())
        return out

    def _segments(self, segments: list[tuple[str, str]], final: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, text in segments:
            if self.stopped:
                break
            if kind == "thinking":
                out.append({"reasoning_content": text})
                continue
            self.answer += text
            cut = min((i for i in (self.answer.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.answer, self.stopped = self.answer[:cut], True
        # the last `hold` characters may be the start of a stop string: they wait for the next piece
        cut = len(self.answer) if (final or self.stopped) else max(0, len(self.answer) - self.hold)
        ready, self.answer = self.answer[:cut], self.answer[cut:]
        if ready:
            out += self._answer(ready)
        return out

    def _answer(self, text: str) -> list[dict[str, Any]]:
        if self.tools is None:
            return [{"content": text}]
        return self._tool_deltas(self.tools.feed(text))

    def _tool_deltas(self, items: list[str | ToolCall]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, str):
                if item:
                    out.append({"content": item})
                continue
            if not self._keep(item):  # parallel_tool_calls: false keeps the first call only
                continue
            out.append({"tool_calls": [tool_call_json(item, len(self.calls))]})
            self.calls.append(item)
        return out

    def _keep(self, call: ToolCall) -> bool:
        return self.parallel or not self.calls


class _Turn:
    """One request's use of the engine: waits its turn, generates, and lets go, however it ends."""

    def __init__(self, served: Served, req: ChatRequest, prompt: str) -> None:
        self.served, self.req, self.prompt = served, req, prompt
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.stop = threading.Event()

    def _pieces(self) -> Generator[str, None, None]:
        return self.served.engine.generate(self.prompt, self.req.images, self.req.sampling, self.stop)

    def _finish_reason(self, reply: _Reply) -> str:
        if reply.calls:
            return "tool_calls"
        if reply.stopped:
            return "stop"
        return "length" if self.served.engine.last_stats.finish == "length" else "stop"

    def _usage(self) -> dict[str, Any]:
        st = self.served.engine.last_stats
        return usage(st.prompt_tokens, st.completion_tokens, st.prompt_tokens - st.prefill_tokens)

    async def _generate(self, reply: _Reply, request: Request | None) -> AsyncIterator[dict[str, Any]]:
        """Deltas as they come; the engine is this turn's until the iteration ends or is cancelled."""
        self.served.waiting += 1
        try:
            await self.served.lock.acquire()
        finally:
            self.served.waiting -= 1
        pieces = self._pieces()
        try:
            while True:
                piece = await anyio.to_thread.run_sync(next, pieces, _DONE)
                if piece is _DONE:
                    break
                assert isinstance(piece, str)
                for delta in reply.feed(piece):
                    yield delta
                if reply.stopped or (request is not None and await request.is_disconnected()):
                    break
            for delta in reply.finish():
                yield delta
        except EngineError as e:
            raise ApiError(500, f"the engine failed: {e}", type="server_error") from None
        finally:
            self.stop.set()  # the engine stops at its next token, if it has not yet
            with anyio.CancelScope(shield=True):  # a cancelled stream still hands the engine back
                await anyio.to_thread.run_sync(pieces.close)
            self.served.lock.release()

    async def whole(self, request: Request) -> dict[str, Any]:
        reply = _Reply(self.req, self.prompt)
        content: list[str] = []
        reasoning: list[str] = []
        async for delta in self._generate(reply, request):
            content.append(delta.get("content", ""))
            reasoning.append(delta.get("reasoning_content", ""))
        return completion(
            self.id,
            self.served.model_id,
            self.created,
            "".join(content),
            "".join(reasoning),
            reply.calls,
            self._finish_reason(reply),
            self._usage(),
        )

    async def stream(self) -> AsyncIterator[str]:
        """SSE data lines: a role delta, the deltas, the finish, usage if asked for, then [DONE]. A
        client that disconnects cancels this (sse-starlette), which stops the generation."""
        model, reply = self.served.model_id, _Reply(self.req, self.prompt)
        first = True
        try:
            async for delta in self._generate(reply, None):
                if first:
                    delta = {"role": "assistant", **delta}
                    first = False
                yield json.dumps(chunk(self.id, model, self.created, delta), ensure_ascii=False)
        except ApiError as e:  # after the 200: the error goes in the stream, as OpenAI's does
            yield json.dumps(e.body(), ensure_ascii=False)
            return
        if first:
            yield json.dumps(chunk(self.id, model, self.created, {"role": "assistant", "content": ""}))
        yield json.dumps(chunk(self.id, model, self.created, {}, finish_reason=self._finish_reason(reply)))
        if self.req.include_usage:
            yield json.dumps(chunk(self.id, model, self.created, None, usage=self._usage()))
        yield "[DONE]"
