"""Conversations on disk: one SQLite file in the user's data dir (Q35_DATA_DIR overrides the dir).

Every write is its own committed transaction (autocommit, WAL), so killing the app mid-reply loses
nothing already written: the reply streamed so far is there, marked incomplete. One connection is
shared by the UI thread and the generation worker, serialised by a lock.

The file is the user's, and SQLite keeps whatever type a column is given: every row read is checked in
one place (`_conversation_row`, `_message_row`). A damaged field never makes a conversation
unopenable: it is read as its default, and a note (file, row, field, problem) says so, which the chat
shows; a message row whose role is unknown is left out, with a note.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, cast, get_type_hints

from q35local.base.errors import InputError
from q35local.base.files import regular_file
from q35local.base.settings import data_dir
from q35local.base.units import GiB

SCHEMA_VERSION = 1
STATE_BUDGET = 4 * GiB  # saved engine states, all conversations together (a cache: the oldest go)
ROLES = ("system", "user", "assistant")


class ConversationSettings(TypedDict, total=False):
    """The settings a conversation keeps (keys this version does not know are kept as they are)."""

    system: str  # the system prompt


SETTINGS: dict[str, type] = get_type_hints(ConversationSettings)  # each key's type, checked on read
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    settings_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    thinking TEXT NOT NULL DEFAULT '',
    images_json TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    complete INTEGER NOT NULL DEFAULT 1,
    stats_json TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


def default_path() -> Path:
    return data_dir() / "chats.sqlite3"


@dataclass
class StoredMessage:
    id: int
    conversation_id: int
    role: str  # "system" | "user" | "assistant"
    content: str
    thinking: str
    images: list[str]  # file paths as attached
    created: float  # unix time
    complete: bool  # False: the reply was cut off by a crash or an engine error while streaming
    stats: dict[str, object] | None  # GenStats fields of an assistant reply, as the file holds them
    notes: list[str] = field(default_factory=list)  # fields of this row that were damaged (see module doc)


@dataclass
class ConversationRow:
    id: int
    title: str
    model: str
    created: float
    updated: float
    settings: ConversationSettings
    notes: list[str] = field(default_factory=list)  # fields of this row that were damaged (see module doc)


class Store:
    """The conversation database. Every sqlite3 failure becomes an InputError naming the file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(self.path.parent, f"cannot create the data folder ({e.strerror})") from None
        if os.path.lexists(self.path):  # SQLite would block on a FIFO, or fail vaguely on a folder
            regular_file(self.path)
        try:
            # isolation_level=None: autocommit, each statement is committed as it runs.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as e:
            raise InputError(self.path, f"cannot open the conversation database ({e})") from None
        try:
            with self._sql() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise InputError(
                        self.path, f"written by a newer q35 (schema {version}); upgrade q35local"
                    )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
                db.execute("PRAGMA foreign_keys=ON")
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("SELECT count(*) FROM conversations").fetchone()
        except InputError:
            self._db.close()
            raise

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as e:
                msg = str(e)
                if "not a database" in msg or "malformed" in msg:
                    msg = f"not a readable conversation database ({msg}); move it aside to start afresh"
                raise InputError(self.path, msg) from None
            except sqlite3.Error as e:
                raise InputError(self.path, f"database error ({e})") from None

    def _touch(self, db: sqlite3.Connection, conv: int) -> None:
        db.execute("UPDATE conversations SET updated=? WHERE id=?", (time.time(), conv))

    def new_conversation(
        self, model: str, title: str = "New chat", settings: ConversationSettings | None = None
    ) -> int:
        now = time.time()
        with self._sql() as db:
            cur = db.execute(
                "INSERT INTO conversations(title, model, created, updated, settings_json) VALUES (?,?,?,?,?)",
                (title, model, now, now, json.dumps(settings or {})),
            )
            return _rowid(cur)

    def add_message(
        self,
        conv: int,
        role: str,
        content: str = "",
        thinking: str = "",
        images: Iterable[str] = (),
        complete: bool = True,
    ) -> int:
        with self._sql() as db:
            cur = db.execute(
                "INSERT INTO messages(conversation_id, role, content, thinking, images_json, created,"
                " complete) VALUES (?,?,?,?,?,?,?)",
                (conv, role, content, thinking, json.dumps([str(p) for p in images]), time.time(), complete),
            )
            self._touch(db, conv)
            return _rowid(cur)

    def update_message(
        self,
        msg_id: int,
        *,
        content: str | None = None,
        thinking: str | None = None,
        complete: bool | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        changes: dict[str, object] = {"content": content, "thinking": thinking, "complete": complete}
        sets = {k: v for k, v in changes.items() if v is not None}
        if stats is not None:
            sets["stats_json"] = json.dumps(stats)
        if not sets:
            return
        assignments = ", ".join(f"{k}=?" for k in sets)  # keys are the fixed column names above
        with self._sql() as db:
            db.execute(f"UPDATE messages SET {assignments} WHERE id=?", (*sets.values(), msg_id))
            db.execute(
                "UPDATE conversations SET updated=?"
                " WHERE id=(SELECT conversation_id FROM messages WHERE id=?)",
                (time.time(), msg_id),
            )

    def delete_message(self, msg_id: int) -> None:
        with self._sql() as db:
            db.execute("DELETE FROM messages WHERE id=?", (msg_id,))

    def messages(self, conv: int, notes: list[str] | None = None) -> list[StoredMessage]:
        """The conversation's messages in order. Damaged fields read as their defaults (each message's
        `notes` say which); rows with an unknown role are left out, noted in `notes` if given."""
        with self._sql() as db:
            rows = db.execute(
                "SELECT id, conversation_id, role, content, thinking, images_json, created, complete,"
                " stats_json FROM messages WHERE conversation_id=? ORDER BY id",
                (conv,),
            ).fetchall()
        out = []
        for r in rows:
            m = self._message_row(r)
            if notes is not None:
                notes.extend(m.notes)
            if m.role in ROLES:
                out.append(m)
        return out

    def conversation(self, conv: int) -> ConversationRow:
        """One conversation's row; an InputError when there is no such id."""
        rows = self._conversations("WHERE id=?", (conv,))
        if not rows:
            raise InputError(self.path, f"no conversation with id {conv}")
        return rows[0]

    def conversations(self) -> list[ConversationRow]:
        """All conversations, the most recently updated first."""
        return self._conversations("ORDER BY updated DESC, id DESC", ())

    def _conversations(self, tail: str, args: tuple) -> list[ConversationRow]:
        with self._sql() as db:
            rows = db.execute(
                f"SELECT id, title, model, created, updated, settings_json FROM conversations {tail}", args
            ).fetchall()
        return [self._conversation_row(r) for r in rows]

    # --- reading rows: every column checked, in one place ---

    def _conversation_row(self, r: tuple) -> ConversationRow:
        check = _Check(f"{self.path}: conversation {r[0]}")
        settings = check.json_object(r[5], "settings_json")
        for key, kind in SETTINGS.items():
            if key in settings and not isinstance(settings[key], kind):
                check.note(f"settings_json: {key!r} is {_kind(settings[key])}, not text; ignored")
                del settings[key]
        return ConversationRow(
            id=r[0],
            title=check.text(r[1], "title", "Untitled"),
            model=check.text(r[2], "model", "unknown model"),
            created=check.time(r[3], "created"),
            updated=check.time(r[4], "updated"),
            settings=cast(ConversationSettings, settings),  # each known key's type checked above
            notes=check.notes,
        )

    def _message_row(self, r: tuple) -> StoredMessage:
        check = _Check(f"{self.path}: message {r[0]}")
        role = r[2]
        if role not in ROLES:
            check.note(f"role is {role!r:.40}, not one of {', '.join(ROLES)}; the message is left out")
        listed = check.json_list(r[5], "images_json")
        images = [p for p in listed if isinstance(p, str) and p and "\0" not in p]
        if len(images) != len(listed):
            check.note("images_json: an entry is not a file name; left out")
        complete = r[7]
        if complete not in (0, 1):  # True/False are stored as 1/0
            check.note(f"complete is {complete!r:.40}, not 0 or 1; read as 1")
            complete = 1
        stats = None if r[8] is None else check.json_object(r[8], "stats_json")
        return StoredMessage(
            id=r[0],
            conversation_id=r[1],
            role=role if isinstance(role, str) else "",
            content=check.text(r[3], "content", ""),
            thinking=check.text(r[4], "thinking", ""),
            images=images,
            created=check.time(r[6], "created"),
            complete=bool(complete),
            stats=stats or None,
            notes=check.notes,
        )

    def rename(self, conv: int, title: str) -> None:
        with self._sql() as db:
            db.execute("UPDATE conversations SET title=? WHERE id=?", (title, conv))

    def set_settings(self, conv: int, settings: ConversationSettings) -> None:
        with self._sql() as db:
            db.execute("UPDATE conversations SET settings_json=? WHERE id=?", (json.dumps(settings), conv))

    def delete(self, conv: int) -> None:
        with self._sql() as db:
            db.execute("DELETE FROM conversations WHERE id=?", (conv,))  # messages go by ON DELETE CASCADE
        for p in self._states(conv):
            p.unlink(missing_ok=True)

    # --- the engine's state of a conversation, beside the database (`q35 chat --resume`) ---

    def state_path(self, conv: int, identity: str) -> Path:
        """Where the state of `conv` under a model (its engine's identity) is kept."""
        return self.path.parent / "state" / f"{conv}-{identity[:24]}.q35state"

    def _states(self, conv: int | None = None) -> list[Path]:
        return sorted((self.path.parent / "state").glob(f"{'*' if conv is None else conv}-*.q35state"))

    def prune_states(self, keep: Path, budget: int = STATE_BUDGET) -> None:
        """After `keep` was written: its conversation's states of other models go, then the least
        recently written ones until all of them fit in `budget` bytes."""
        conv = keep.name.split("-", 1)[0]
        for p in self._states(int(conv)) if conv.isdigit() else []:
            if p != keep:
                p.unlink(missing_ok=True)
        files = []
        for p in self._states():
            with contextlib.suppress(OSError):
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):  # oldest first
            if total <= budget:
                break
            p.unlink(missing_ok=True)
            total -= size

    def export_markdown(self, conv: int) -> str:
        """The conversation as Markdown: thinking folded in <details>, images as links."""
        row = self.conversation(conv)
        when = datetime.fromtimestamp(row.created).strftime("%Y-%m-%d %H:%M")
        out = [f"# {row.title}", "", f"*{row.model} · {when}*", ""]
        system = row.settings.get("system")
        if system:
            out += ["**System**", "", system, ""]
        for m in self.messages(conv):
            out += [f"**{m.role.capitalize()}**", ""]
            out += [
                f"![{Path(p).name}]({Path(p).as_uri() if Path(p).is_absolute() else p})" for p in m.images
            ]
            if m.images:
                out.append("")
            if m.thinking:
                out += ["<details><summary>Thinking</summary>", "", m.thinking, "", "</details>", ""]
            if m.content:
                out += [m.content, ""]
            if not m.complete or (m.stats or {}).get("stopped"):
                out += ["*(stopped before the end)*", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _rowid(cur: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (sqlite3 types lastrowid as optional: None before any)."""
    rowid = cur.lastrowid
    assert rowid is not None, "lastrowid read before an INSERT"
    return rowid


class _Check:
    """The checks of one row's columns; `notes` gathers what was damaged and how it was read."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.notes: list[str] = []

    def note(self, problem: str) -> None:
        self.notes.append(f"{self.where}: {problem}")

    def text(self, value: object, name: str, default: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            self.note(f"{name} is bytes, not text; read as UTF-8")
            return value.decode("utf-8", errors="replace")
        self.note(f"{name} is {_kind(value)}, not text; read as {default!r}")
        return default

    def time(self, value: object, name: str) -> float:
        # a unix time; out of this range datetime cannot show it (and nothing we wrote is)
        if isinstance(value, int | float) and math.isfinite(value) and 0 <= value < 1e11:
            return float(value)
        self.note(f"{name} is {value!r:.40}, not a time; read as 0")
        return 0.0

    def _parse(self, value: object, name: str) -> object:
        if not isinstance(value, str | bytes):
            self.note(f"{name} is {_kind(value)}, not JSON text; read as empty")
            return None
        try:
            return json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            self.note(f"{name} is not valid JSON; read as empty")
            return None

    def json_object(self, value: object, name: str) -> dict[str, object]:
        data = self._parse(value, name)
        if data is not None and not isinstance(data, dict):
            self.note(f"{name} holds {_kind(data)}, not an object; read as empty")
        return data if isinstance(data, dict) else {}

    def json_list(self, value: object, name: str) -> list[object]:
        data = self._parse(value, name)
        if data is not None and not isinstance(data, list):
            self.note(f"{name} holds {_kind(data)}, not a list; read as empty")
        return data if isinstance(data, list) else []


def _kind(value: object) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        bytes: "bytes",
    }.get(type(value), type(value).__name__)
