"""The conversation store: a real SQLite file under Q35_DATA_DIR; every write visible at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from q35local.store import Store, default_path
from quantize.errors import InputError

ROOT = Path(__file__).parents[1]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("Q35_DATA_DIR", str(d))
    return d


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    s = Store()
    yield s
    s.close()


def test_default_path_follows_q35_data_dir(data_dir: Path, store: Store) -> None:
    assert default_path() == data_dir / "chats.sqlite3"
    assert store.path == data_dir / "chats.sqlite3"
    assert store.path.is_file()
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_messages_round_trip(store: Store) -> None:
    conv = store.new_conversation("Qwen3.5-9B", "Cats")
    u = store.add_message(conv, "user", "What is this?", images=["/pics/cat.png", "/pics/dog.jpg"])
    a = store.add_message(conv, "assistant", complete=False)
    store.update_message(a, content="A cat", thinking="Whiskers")
    store.update_message(a, complete=True, stats={"completion_tokens": 3, "stopped": False})
    msgs = store.messages(conv)
    assert [m.id for m in msgs] == [u, a]
    assert (msgs[0].role, msgs[0].content, msgs[0].images, msgs[0].complete) == (
        "user",
        "What is this?",
        ["/pics/cat.png", "/pics/dog.jpg"],
        True,
    )
    assert (msgs[1].content, msgs[1].thinking, msgs[1].complete) == ("A cat", "Whiskers", True)
    assert msgs[1].stats == {"completion_tokens": 3, "stopped": False}
    assert msgs[0].stats is None and msgs[0].thinking == ""


def test_update_message_changes_only_the_given_fields(store: Store) -> None:
    conv = store.new_conversation("m")
    a = store.add_message(conv, "assistant", "x", "t", complete=False)
    store.update_message(a, content="xy")
    (m,) = store.messages(conv)
    assert (m.content, m.thinking, m.complete) == ("xy", "t", False)
    store.update_message(a, content="", thinking="")  # empty strings are values, not "unchanged"
    (m,) = store.messages(conv)
    assert (m.content, m.thinking) == ("", "")


def test_conversations_newest_first_rename_and_delete(store: Store) -> None:
    a = store.new_conversation("m", "A")
    b = store.new_conversation("m", "B")
    assert [c.id for c in store.conversations()] == [b, a]
    store.add_message(a, "user", "bump")
    assert [c.title for c in store.conversations()] == ["A", "B"]
    store.rename(b, "Renamed")
    store.delete_message(store.add_message(b, "user", "gone"))
    assert store.messages(b) == []
    store.add_message(b, "user", "stays")
    assert store.conversation(b).title == "Renamed"
    store.delete(b)
    assert [c.id for c in store.conversations()] == [a]
    with sqlite3.connect(store.path) as db:  # the cascade really removed the rows
        assert db.execute("SELECT count(*) FROM messages WHERE conversation_id=?", (b,)).fetchone()[0] == 0
    with pytest.raises(InputError) as e:
        store.conversation(b)
    assert str(e.value) == f"{store.path}: no conversation with id {b}"


def test_settings(store: Store) -> None:
    conv = store.new_conversation("m", settings={"system": "Be brief."})
    assert store.conversation(conv).settings == {"system": "Be brief."}
    store.set_settings(conv, {"system": "Be verbose."})
    assert store.conversations()[0].settings == {"system": "Be verbose."}


def test_a_partial_write_is_visible_to_another_process_at_once(store: Store) -> None:
    conv = store.new_conversation("m")
    a = store.add_message(conv, "assistant", complete=False)
    store.update_message(a, content="half a rep")
    code = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
        "q = 'SELECT content, complete FROM messages WHERE id=?';"
        "print(db.execute(q, (int(sys.argv[2]),)).fetchone())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store.path), str(a)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "('half a rep', 0)"


def test_a_killed_writer_loses_nothing_it_wrote(data_dir: Path) -> None:
    code = (
        "import os, signal; from q35local.store import Store; s = Store();"
        "c = s.new_conversation('m'); s.add_message(c, 'user', 'hi');"
        "a = s.add_message(c, 'assistant', complete=False);"
        "s.update_message(a, content='partial', thinking='t');"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    store = Store()
    try:
        (conv,) = store.conversations()
        msgs = store.messages(conv.id)
        assert [(m.role, m.content, m.thinking, m.complete) for m in msgs] == [
            ("user", "hi", "", True),
            ("assistant", "partial", "t", False),
        ]
    finally:
        store.close()


def test_usable_from_a_worker_thread(store: Store) -> None:
    conv = store.new_conversation("m")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(20):
                store.add_message(conv, "user", str(i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.messages(conv)) == 60


def test_export_markdown(store: Store) -> None:
    conv = store.new_conversation("Qwen3.5-9B", "Cats", settings={"system": "Be brief."})
    store.add_message(conv, "user", "What is this?", images=["/pics/cat.png"])
    a = store.add_message(conv, "assistant", "A cat.", "Whiskers, fur.")
    store.update_message(a, stats={"stopped": True})
    md = store.export_markdown(conv)
    assert md.startswith("# Cats\n\n*Qwen3.5-9B · ")
    assert "**System**\n\nBe brief." in md
    assert "**User**\n\n![cat.png](file:///pics/cat.png)\n\nWhat is this?" in md
    assert (
        "**Assistant**\n\n<details><summary>Thinking</summary>\n\nWhiskers, fur.\n\n</details>\n\nA cat."
        in md
    )
    assert md.endswith("*(stopped before the end)*\n")


@pytest.mark.parametrize("junk", [b"this is not a database at all\n" * 40, b"\0" * 4096])
def test_a_corrupt_file_is_an_input_error(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "chats.sqlite3"
    path.write_bytes(junk)
    with pytest.raises(InputError) as e:
        Store(path).conversations()
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "database" in msg


def test_a_damaged_header_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    s = Store(path)
    s.add_message(s.new_conversation("m"), "user", "hi")
    s.close()
    data = bytearray(path.read_bytes())
    data[:16] = b"garbage garbage!"
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with pytest.raises(InputError) as e:
        Store(path)
    assert str(e.value).startswith(f"{path}: not a readable conversation database")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(InputError) as e:
        Store(path)
    assert "newer" in str(e.value)


def test_an_unwritable_data_dir_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("Q35_DATA_DIR", str(tmp_path / "file" / "sub"))
    with pytest.raises(InputError) as e:
        Store()
    assert str(e.value).startswith(str(tmp_path / "file" / "sub"))
