"""Image thumbnails in the transcript and the attachment bar.

textual-image picks its renderer (Kitty graphics, Sixel, half-block cells) by querying the terminal when
`textual_image.widget` is first imported, which only works before Textual owns the terminal; `launch()`
imports it early. Headless runs (tests, snapshots) always get the half-block renderer: it needs no
terminal and draws the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image as PILImage
from rich.text import Text
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from q35local.base.errors import InputError
from q35local.chat.images import PreparedImage, prepare_image

if TYPE_CHECKING:  # for mypy only: importing textual_image.widget queries the terminal (see image_widget)
    # the base class of textual-image's widgets (its package exports only the concrete ones)
    from textual_image.widget._base import Image as ImageWidget

Attachment = PreparedImage | Path
THUMB_PIXELS = 192 * 192  # enough for a few terminal rows; scaling down first keeps rendering cheap


def describe(image: Attachment) -> str:
    if isinstance(image, PreparedImage):
        w, h = image.source_size
        return f"{image.path.name} ({w}×{h})"
    return Path(image).name


def _pil(image: Attachment) -> PILImage.Image | None:
    """A small RGB picture, or None when the file is gone or no longer an image (reopened chats)."""
    if isinstance(image, PreparedImage):
        pic = PILImage.fromarray(image.rgb)
    else:
        try:
            prepared = prepare_image(image, min_pixels=32 * 32, max_pixels=THUMB_PIXELS)
        except InputError:
            return None
        pic = PILImage.fromarray(prepared.rgb)
    pic.thumbnail((192, 192))
    return pic


def image_widget(graphics: bool) -> type[ImageWidget] | None:
    """textual-image's widget class: the auto-detected one in a real terminal, half-block otherwise;
    None when textual-image cannot start here (0.12 divides by zero when a pty reports no size)."""
    try:
        if graphics:
            from textual_image.widget import Image

            return Image
        from textual_image.widget import HalfcellImage

        return HalfcellImage
    except Exception:
        return None


def thumbnail(image: Attachment, *, graphics: bool) -> Widget:
    """A captioned thumbnail; `graphics` allows terminal graphics protocols (real terminals only)."""
    pic = _pil(image)
    caption = describe(image)
    widget_class = image_widget(graphics) if pic is not None else None
    if pic is None or widget_class is None:
        missing = "unavailable" if pic is None else "attached"
        return Static(Text(f"[image {missing}: {caption}]"), classes="thumb-missing")
    box = Vertical(widget_class(pic, classes="thumb-image"), Static(Text(caption), classes="thumb-caption"))
    box.add_class("thumb")
    return box
