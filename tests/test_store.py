"""The conversation store: a real SQLite file under Q35_DATA_DIR; every write visible at once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from q35local.base.errors import InputError
from q35local.chat.store import Store, default_path

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
        "import os, signal; from q35local.chat.store import Store; s = Store();"
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


# --- rows damaged in the file: read as defaults, with a note naming the file, the row and the field ---


def _edit(path: Path, sql: str, *args: object) -> None:
    """Change the file behind the store's back, as sqlite3 (or another program) would."""
    with sqlite3.connect(path) as db:
        db.execute(sql, args)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("[1,2]", "settings_json holds a list, not an object; read as empty"),
        ("5", "settings_json holds a number, not an object; read as empty"),
        ("not json {", "settings_json is not valid JSON; read as empty"),
        (b"\xff\x00", "settings_json is not valid JSON; read as empty"),
        ('{"system": true}', "settings_json: 'system' is a boolean, not text; ignored"),
        ('{"system": {"nested": 1}}', "settings_json: 'system' is an object, not text; ignored"),
    ],
)
def test_damaged_settings_read_as_defaults_with_a_note(store: Store, raw: object, problem: str) -> None:
    conv = store.new_conversation("m", "Cats", settings={"system": "Be brief."})
    store.add_message(conv, "user", "hi")
    _edit(store.path, "UPDATE conversations SET settings_json=? WHERE id=?", raw, conv)
    row = store.conversation(conv)
    assert row.settings == {}
    assert row.notes == [f"{store.path}: conversation {conv}: {problem}"]
    assert [c.notes for c in store.conversations()] == [row.notes]
    assert "**System**" not in store.export_markdown(conv)  # and the export still works


def test_unknown_settings_are_kept_and_the_row_is_not_damaged(store: Store) -> None:
    conv = store.new_conversation("m")
    _edit(store.path, "UPDATE conversations SET settings_json=? WHERE id=?", '{"think": "yes"}', conv)
    row = store.conversation(conv)
    assert (row.settings, row.notes) == ({"think": "yes"}, [])


def test_damaged_conversation_columns(store: Store) -> None:
    # SQLite turns a number put in a TEXT column into text; a blob it keeps, and any text in a REAL one
    conv = store.new_conversation("m", "Cats")
    change = "title=X'ff', model=X'6d', created='soon', updated=1e300"
    _edit(store.path, f"UPDATE conversations SET {change} WHERE id=?", conv)
    row = store.conversation(conv)
    assert (row.title, row.model, row.created, row.updated) == ("\ufffd", "m", 0.0, 0.0)
    where = f"{store.path}: conversation {conv}"
    assert row.notes == [
        f"{where}: title is bytes, not text; read as UTF-8",
        f"{where}: model is bytes, not text; read as UTF-8",
        f"{where}: created is 'soon', not a time; read as 0",
        f"{where}: updated is 1e+300, not a time; read as 0",
    ]
    assert store.export_markdown(conv).startswith("# \ufffd\n\n*m · 19")  # 1970 (or 1969, west of UTC)


def test_damaged_message_rows(store: Store) -> None:
    conv = store.new_conversation("m")
    ids = [store.add_message(conv, "user", f"q{i}") for i in range(6)]
    edits = [
        ("role='bogus'", "role is 'bogus', not one of system, user, assistant; the message is left out"),
        ("content=X'c328'", "content is bytes, not text; read as UTF-8"),
        ("images_json='{\"a\": 1}'", "images_json holds an object, not a list; read as empty"),
        ('images_json=\'["ok.png", 7, ""]\'', "images_json: an entry is not a file name; left out"),
        ("complete='yes'", "complete is 'yes', not 0 or 1; read as 1"),
        ("stats_json='[1]'", "stats_json holds a list, not an object; read as empty"),
    ]
    for msg_id, (change, _) in zip(ids, edits, strict=True):
        _edit(store.path, f"UPDATE messages SET {change} WHERE id=?", msg_id)
    notes: list[str] = []
    msgs = store.messages(conv, notes)
    assert [m.id for m in msgs] == ids[1:]  # the unknown role is left out
    assert notes == [
        f"{store.path}: message {i}: {problem}" for i, (_, problem) in zip(ids, edits, strict=True)
    ]
    assert (msgs[0].content, msgs[1].images, msgs[2].images, msgs[3].complete, msgs[4].stats) == (
        "\ufffd(",
        [],
        ["ok.png"],
        True,
        None,
    )
    store.export_markdown(conv)  # no traceback either


def test_a_fifo_or_a_folder_in_place_of_the_database_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "chats.sqlite3"
    os.mkfifo(fifo)  # SQLite would wait on it for good
    with pytest.raises(InputError) as e:
        Store(fifo)
    assert str(e.value) == f"{fifo}: is not a regular file (a FIFO)"
    folder = tmp_path / "dir.sqlite3"
    folder.mkdir()
    with pytest.raises(InputError) as e:
        Store(folder)
    assert str(e.value) == f"{folder}: is a folder, not a file"


def test_q35_data_dir_with_an_unknown_users_home_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("Q35_DATA_DIR", "~no-such-user-q35/chats")
    with pytest.raises(InputError) as e:
        Store()
    assert str(e.value) == "Q35_DATA_DIR=~no-such-user-q35/chats: cannot expand ~no-such-user-q35"
