"""q35local/tui/keys.py is the only list of the chat app's keys: every binding, /help item, dialog hint
and palette command comes from its tables, and nothing of the kind exists outside them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_engine import Call, FakeEngine
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Label

from q35local.chat.store import Store
from q35local.chat.template import ChatTemplate
from q35local.tui import ChatApp
from q35local.tui.app import HELP
from q35local.tui.keys import (
    APP_KEYS,
    CONFIRM_KEYS,
    CONVERSATION_KEYS,
    IMAGE_PICKER_KEYS,
    PALETTE,
    TEXT_PROMPT_KEYS,
    Key,
    hint_line,
)
from q35local.tui.screens import Confirm, ConversationsScreen, ImagePicker, TextPrompt
from q35local.tui.widgets import NoticeLine

SIZE = (100, 32)
DIALOGS: list[tuple[type[Screen], tuple[Key, ...]]] = [
    (ConversationsScreen, CONVERSATION_KEYS),
    (TextPrompt, TEXT_PROMPT_KEYS),
    (Confirm, CONFIRM_KEYS),
    (ImagePicker, IMAGE_PICKER_KEYS),
]


def _pairs(bindings: list[BindingType]) -> list[tuple[str, str, str, bool]]:
    """(key, action, description, show) of each single key, "d,delete" expanded as Textual does."""
    return [(b.key, b.action, b.description, b.show) for b in Binding.make_bindings(bindings)]


def _table_pairs(table: tuple[Key, ...], *, textual: bool) -> list[tuple[str, str, str, bool]]:
    return [
        (key, k.action, k.label, k.footer)
        for k in table
        if k.bound or (textual and k.textual)
        for key in k.key_list
    ]


def _items(help_text: str) -> list[str]:
    """The "Keys:" paragraph of /help, one item per key."""
    block = help_text.split("Keys: ", 1)[1].split(".\n", 1)[0]
    return [item.strip() for item in block.replace("\n", " ").split(" · ")]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def test_every_binding_of_the_app_is_in_the_table() -> None:
    ours = _pairs(ChatApp.__dict__["BINDINGS"])
    assert ours == _table_pairs(APP_KEYS, textual=False)
    # and the keys Textual binds (ctrl+q, ctrl+p), which help names too; ctrl+c is a hidden system one
    textual = [
        (b.key, b.action)
        for cls in ChatApp.__mro__[1:]
        if "BINDINGS" in cls.__dict__
        for b in Binding.make_bindings(cls.__dict__["BINDINGS"])
        if not b.system
    ]
    textual.append((ChatApp.COMMAND_PALETTE_BINDING, "command_palette"))
    listed = [(key, k.action) for k in APP_KEYS if k.textual for key in k.key_list]
    assert sorted(textual) == sorted(listed)
    assert PALETTE.keys == ChatApp.COMMAND_PALETTE_BINDING


@pytest.mark.parametrize(("screen", "table"), DIALOGS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_binding_of_a_dialog_is_in_its_table(screen: type[Screen], table: tuple[Key, ...]) -> None:
    assert _pairs(screen.__dict__["BINDINGS"]) == _table_pairs(table, textual=False)


@pytest.mark.parametrize("table", [APP_KEYS] + [t for _, t in DIALOGS])
def test_a_table_binds_each_key_once_to_an_action_that_exists(table: tuple[Key, ...]) -> None:
    keys = [key for k in table for key in k.key_list]
    assert len(keys) == len(set(keys))
    owner = {id(APP_KEYS): ChatApp, **{id(t): s for s, t in DIALOGS}}[id(table)]
    for k in table:
        if k.action:
            assert hasattr(owner, f"action_{k.action.partition('(')[0]}"), k


def test_help_lists_exactly_the_table() -> None:
    assert _items(HELP) == [k.help_item() for k in APP_KEYS]
    assert "Keys: Enter send · ctrl+j newline · Esc stop the reply ·" in HELP  # as it always read
    assert all(len(line) <= 108 for line in HELP.splitlines())


@pytest.mark.asyncio
async def test_help_and_palette_of_the_running_app_come_from_the_table(store: Store) -> None:
    app = ChatApp(FakeEngine([["ok"]]), store, ChatTemplate.default(), think=False)
    async with app.run_test(size=SIZE) as pilot:
        app.prompt.text = "/help"
        await pilot.press("enter")
        await pilot.pause()
        shown = [n.text for n in app.query(NoticeLine) if n.kind == "info"]
        assert shown and _items(shown[-1]) == [k.help_item() for k in APP_KEYS]

        textual = {c.title for c in App.get_system_commands(app, app.screen)}
        ours = [(c.title, c.help) for c in app.get_system_commands(app.screen) if c.title not in textual]
        assert ours == [(k.command, k.palette_help()) for k in APP_KEYS if k.command]
        assert "Quit" in textual  # ctrl+q's command is Textual's own
        # every key the app binds is a palette command too (Textual's and the widgets' keys are not)
        assert {k.action for k in APP_KEYS if k.bound} == {k.action for k in APP_KEYS if k.command}


@pytest.mark.asyncio
async def test_dialog_hints_come_from_the_tables(store: Store) -> None:
    app = ChatApp(FakeEngine(), store, ChatTemplate.default(), think=False)
    hints = {
        ConversationsScreen: "enter open · n new · r rename · d delete · e export · esc close",
        TextPrompt: "enter ok · esc cancel",
        Confirm: "y yes · n no",
        ImagePicker: "enter attach · esc cancel · type a folder above, then enter",
    }
    screens: list[tuple[Screen, tuple[Key, ...]]] = [
        (ConversationsScreen(store, None), CONVERSATION_KEYS),
        (TextPrompt("Rename"), TEXT_PROMPT_KEYS),
        (Confirm("Sure?"), CONFIRM_KEYS),
        (ImagePicker(), IMAGE_PICKER_KEYS),
    ]
    async with app.run_test(size=SIZE) as pilot:
        for screen, table in screens:
            await app.push_screen(screen)
            await pilot.pause()
            hint = str(screen.query_one(".dialog-help", Label).content)
            assert hint == hints[type(screen)] and hint.startswith(hint_line(table))
            app.pop_screen()
            await pilot.pause()


class GatedEngine(FakeEngine):
    """Holds its reply until the test lets it go, so the palette can be used while a reply streams."""

    def __init__(self) -> None:
        super().__init__([["slow"]])
        self.go = threading.Event()

    def _stream(self, call: Call, script: list) -> Iterator[str]:
        self.go.wait(10)
        yield from super()._stream(call, script)


@pytest.mark.asyncio
async def test_a_palette_command_whose_key_is_greyed_out_says_why(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = GatedEngine()
    app = ChatApp(engine, store, ChatTemplate.default(), think=False)
    async with app.run_test(size=SIZE) as pilot:
        app.prompt.text = "hi"
        await pilot.press("enter")
        await pilot.pause()
        assert app.generating
        said: list[str] = []
        monkeypatch.setattr(app, "notify", lambda text, **_: said.append(text))
        commands = {c.title: c.callback for c in app.get_system_commands(app.screen)}
        await commands["Regenerate last reply"]()
        assert said == ["A reply is still coming: Esc stops it first."]
        engine.go.set()
        while app.generating:
            await pilot.pause(0.02)
    assert len(engine.calls) == 1  # nothing was regenerated
