"""Image attachments: check that a file is a real, sanely sized image, then scale it for the projector.

Everything about the file is checked from its header before any pixel is decoded (the byte size, the
format, the pixel count), so a decompression bomb or a huge scan costs nothing. Only formats with plain
decoders are opened: Pillow's EPS/PSD/... plugins are never reached by a pasted path.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from q35local.base.errors import InputError
from q35local.base.files import regular_file
from q35local.base.units import MB, format_size

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
FACTOR = 32  # Qwen's vision tower: 16-pixel patches merged 2x2, so sides are multiples of 32
MAX_ASPECT = 200  # Qwen's processor refuses more elongated images; so do we, with a clearer message
# 144 megapixels: a 108 MP phone photo passes; decoding it as RGB takes ~430 MB, bounded and brief.
# It is below Pillow's own hard limit (~179 MP), so our message (with size and limit) always wins.
MAX_SOURCE_PIXELS = 12_000 * 12_000


@dataclass
class PreparedImage:
    """An attachment ready for the engine: `rgb` is uint8 [height, width, 3]."""

    path: Path
    rgb: np.ndarray
    width: int
    height: int
    source_size: tuple[int, int]  # (w, h) as displayed (after EXIF orientation), before scaling


def fit_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's smart_resize: keep the aspect, sides multiples of 32, area within [min, max] pixels."""
    w = max(FACTOR, round(width / FACTOR) * FACTOR)
    h = max(FACTOR, round(height / FACTOR) * FACTOR)
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
        h = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
    elif w * h < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w = math.ceil(width * beta / FACTOR) * FACTOR
        h = math.ceil(height * beta / FACTOR) * FACTOR
    return w, h


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.0f} megapixels" if n >= 10e6 else f"{n / 1e6:.1f} megapixels"


def prepare_image(
    path: str | Path,
    *,
    min_pixels: int = 256 * 256,
    max_pixels: int = 1024 * 1024,
    max_file_bytes: int = 50 * MB,  # a file size, so decimal (base/units.py)
    max_source_pixels: int = MAX_SOURCE_PIXELS,
) -> PreparedImage:
    """Load `path` as RGB scaled into [min_pixels, max_pixels]; any problem is one InputError line."""
    if not FACTOR * FACTOR <= min_pixels <= max_pixels:
        raise ValueError(f"bad pixel budget [{min_pixels}, {max_pixels}]")
    if "\0" in str(path):  # from a paste or a stored conversation: os.stat would raise ValueError
        raise InputError(None, f"{str(path)!r:.80}: a file name cannot contain a NUL byte")
    try:
        path = Path(path).expanduser()
    except RuntimeError:  # ~name of a user this system does not know
        raise InputError(path, "no such image file (no such user's home folder)") from None
    # a regular file only: a FIFO would block the open below for good, a device never end
    size = regular_file(path, "no such image file").st_size
    if size > max_file_bytes:
        raise InputError(
            path, f"image file is {format_size(size)}; the limit is {format_size(max_file_bytes)}"
        )
    return _open(path, path, min_pixels, max_pixels, max_source_pixels)


def prepare_image_bytes(
    data: bytes,
    name: str,
    *,
    min_pixels: int = 256 * 256,
    max_pixels: int = 1024 * 1024,
    max_file_bytes: int = 50 * MB,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
) -> PreparedImage:
    """prepare_image for an image already in memory (a data: URL's bytes); `name` says where it came
    from (a request's field path) and stands as the origin of every InputError and as its `path`."""
    if not FACTOR * FACTOR <= min_pixels <= max_pixels:
        raise ValueError(f"bad pixel budget [{min_pixels}, {max_pixels}]")
    if len(data) > max_file_bytes:
        raise InputError(
            name, f"image is {format_size(len(data))}; the limit is {format_size(max_file_bytes)}"
        )
    return _open(Path(name), io.BytesIO(data), min_pixels, max_pixels, max_source_pixels)


def _open(
    origin: Path, source: Path | io.BytesIO, min_pixels: int, max_pixels: int, max_source_pixels: int
) -> PreparedImage:
    """Open `source` (a file or bytes) by its header and prepare it; problems are named by `origin`."""
    with warnings.catch_warnings():
        # Pillow warns above ~89 MP; our own limit (checked below, before decoding) is what applies.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(source, formats=FORMATS) as im:
                return _prepare(origin, im, min_pixels, max_pixels, max_source_pixels)
        except UnidentifiedImageError:
            raise InputError(origin, "not an image (or not PNG, JPEG, WebP, GIF, BMP or TIFF)") from None
        except Image.DecompressionBombError:  # above Pillow's own hard limit (~179 MP)
            claimed = _claimed_size(source)
            if claimed is None:
                raise InputError(origin, f"image is over {_megapixels(max_source_pixels)}") from None
            raise _too_big(origin, *claimed, max_source_pixels) from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InputError(origin, f"damaged or unreadable image ({' '.join(str(e).split())})") from None


def _prepare(path: Path, im: Image.Image, min_pixels: int, max_pixels: int, max_source: int) -> PreparedImage:
    w, h = im.size
    if w * h > max_source:
        raise _too_big(path, w, h, max_source)
    if w == 0 or h == 0:
        raise InputError(path, f"image is {w}x{h}: empty")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise InputError(
            path, f"image is {w}x{h}: more elongated than {MAX_ASPECT}:1, the vision encoder's limit"
        )
    swapped = im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    source = (h, w) if swapped else (w, h)
    tw, th = fit_size(*source, min_pixels, max_pixels)
    if im.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when that still covers the target
        im.draft("RGB", (th, tw) if swapped else (tw, th))
    im.load()
    im = ImageOps.exif_transpose(im)
    im = _to_rgb(im)
    if im.size != (tw, th):
        im = im.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    rgb = np.asarray(im, dtype=np.uint8).copy()
    return PreparedImage(path=path, rgb=rgb, width=tw, height=th, source_size=source)


def _too_big(path: Path, w: int, h: int, limit: int) -> InputError:
    return InputError(
        path,
        f"image is {w}x{h} ({_megapixels(w * h)}); "
        f"the limit is {_megapixels(limit)} (decompression-bomb guard)",
    )


def _claimed_size(source: Path | io.BytesIO) -> tuple[int, int] | None:
    """The size in the header, read through the format's plugin directly: Image.open() refuses to
    tell it once it exceeds Pillow's own limit, and the user should hear the actual size."""
    with open(source, "rb") if isinstance(source, Path) else contextlib.nullcontext(source) as f:
        f.seek(0)
        prefix = f.read(16)
        for fmt in FORMATS:
            factory, accept = Image.OPEN.get(fmt, (None, None))
            if factory is None or (accept is not None and not accept(prefix)):
                continue
            f.seek(0)
            try:
                return factory(f, str(source) if isinstance(source, Path) else "").size
            except Exception:
                continue
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB; transparent areas become white (screenshots and logos), not whatever color they hid."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _grey_to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def _grey_to_8bit(im: Image.Image) -> Image.Image:
    """A greyscale image of more than 8 bits (16-bit PNG and TIFF, 32-bit integer or float TIFF) as
    8-bit "L", scaled by its range: Pillow's own convert() clips at 255, so 16-bit values 256..65535
    all came out white. 16-bit values are scaled from 0..65535 (65535 -> 255, rounded); 32-bit
    integers holding 16-bit values likewise, other integers by their own min..max; floats in 0..1
    from 0..1, others by their min..max (NaN and infinities as the minimum)."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):  # integers all the way: a 144 MP image stays well under 1 GB
        return Image.fromarray(((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), "L")
    a = a.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        a[~finite] = np.nan
    lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if finite.any() else (0.0, 0.0)
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.nan_to_num((a - lo) * scale, nan=0.0)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L")


def looks_like_image_path(text: str) -> Path | None:
    """The image file a pasted or dropped text names (quoted, file:// URL, ~, backslash-escaped
    spaces), or None when it is not one line naming an existing file with an image suffix."""
    s = text.strip()
    if not s or "\n" in s or len(s) > 4096:
        return None
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = s[1:-1]
    if s.startswith("file://"):
        s = unquote(urlparse(s).path)
    elif "\\ " in s or "\\(" in s or "\\)" in s:
        s = re.sub(r"\\(.)", r"\1", s)  # a terminal's drag-and-drop escaping
    try:
        p = Path(s).expanduser()
        return p if p.suffix.lower() in SUFFIXES and p.is_file() else None
    except (OSError, RuntimeError, ValueError):
        return None
