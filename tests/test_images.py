"""Image attachments: real files made with Pillow; bad ones refused by their header, before decoding."""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from q35local.base.errors import InputError
from q35local.chat.images import (
    MAX_SOURCE_PIXELS,
    PreparedImage,
    fit_size,
    looks_like_image_path,
    prepare_image,
)

BUDGET = {"min_pixels": 256 * 256, "max_pixels": 1024 * 1024}


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height; its pixel data is a few bytes (decoding would fail)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def halves(path: Path, size: tuple[int, int], fmt: str, **save: object) -> Path:
    """Left half red, right half blue."""
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    im.save(path, fmt, **save)
    return path


def one_line_error(e: pytest.ExceptionInfo[InputError], path: Path) -> str:
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    return msg


def test_png_is_scaled_into_the_budget_keeping_aspect(tmp_path: Path) -> None:
    img = prepare_image(halves(tmp_path / "a.png", (1600, 900), "PNG"), **BUDGET)
    assert img.source_size == (1600, 900)
    assert img.rgb.dtype == np.uint8
    assert img.rgb.shape == (img.height, img.width, 3)
    assert img.width % 32 == 0 and img.height % 32 == 0
    assert 256 * 256 <= img.width * img.height <= 1024 * 1024
    assert abs(img.width / img.height - 16 / 9) < 0.05
    assert tuple(img.rgb[img.height // 2, 10]) == (255, 0, 0)
    assert tuple(img.rgb[img.height // 2, img.width - 10]) == (0, 0, 255)


def test_small_image_is_scaled_up_to_the_minimum(tmp_path: Path) -> None:
    img = prepare_image(halves(tmp_path / "s.png", (40, 20), "PNG"), **BUDGET)
    assert img.width * img.height >= 256 * 256
    assert img.width == 2 * img.height


def test_large_jpeg_is_scaled_down(tmp_path: Path) -> None:
    img = prepare_image(halves(tmp_path / "big.jpg", (4000, 3000), "JPEG", quality=95), **BUDGET)
    assert img.source_size == (4000, 3000)
    assert img.width * img.height <= 1024 * 1024
    assert img.width % 32 == 0 and img.height % 32 == 0
    r, g, b = (int(v) for v in img.rgb[img.height // 2, 20])
    assert r > 240 and g < 20 and b < 20


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise: the red left half ends up on top
    path = halves(tmp_path / "phone.jpg", (640, 320), "JPEG", exif=exif, quality=95)
    img = prepare_image(path, **BUDGET)
    assert img.source_size == (320, 640)
    assert img.height > img.width
    top, bottom = img.rgb[10, img.width // 2], img.rgb[img.height - 10, img.width // 2]
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_transparency_becomes_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    im.paste((0, 128, 0, 255), (100, 100, 200, 200))
    im.save(tmp_path / "logo.png")
    img = prepare_image(tmp_path / "logo.png", **BUDGET)
    assert tuple(img.rgb[2, 2]) == (255, 255, 255)
    assert tuple(img.rgb[img.height // 2, img.width // 2]) == (0, 128, 0)


def test_text_file_renamed_png_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("just some notes\n")
    with pytest.raises(InputError) as e:
        prepare_image(path, **BUDGET)
    assert "not an image" in one_line_error(e, path)


def test_huge_image_is_refused_from_its_header(tmp_path: Path) -> None:
    path = png_claiming(tmp_path / "bomb.png", 30000, 30000)
    assert path.stat().st_size < 200
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        prepare_image(path, **BUDGET)
    assert time.perf_counter() - t0 < 1.0
    msg = one_line_error(e, path)
    # the size and the limit are named; "damaged" would mean it tried to decode the pixels
    assert "30000x30000" in msg and "900 megapixels" in msg and "144 megapixels" in msg
    assert MAX_SOURCE_PIXELS == 144_000_000


def test_below_pillows_hard_limit_our_check_still_comes_before_decoding(tmp_path: Path) -> None:
    path = png_claiming(tmp_path / "big.png", 12000, 12000)  # Pillow only warns at 144 MP
    with pytest.raises(InputError) as e:
        prepare_image(path, max_source_pixels=100_000_000, **BUDGET)
    msg = one_line_error(e, path)
    assert "12000x12000" in msg and "144 megapixels" in msg and "100 megapixels" in msg


def test_pillows_own_bomb_limit_also_gives_one_line(tmp_path: Path) -> None:
    path = png_claiming(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(InputError) as e:
        prepare_image(path, max_source_pixels=10**12, **BUDGET)
    msg = one_line_error(e, path)
    assert "30000x30000" in msg and "900 megapixels" in msg and "decompression-bomb" in msg


def test_damaged_png_is_refused(tmp_path: Path) -> None:
    good = halves(tmp_path / "good.png", (512, 512), "PNG", compress_level=0)
    path = tmp_path / "cut.png"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as e:
        prepare_image(path, **BUDGET)
    assert "damaged" in one_line_error(e, path)


def test_header_only_png_is_refused_as_damaged(tmp_path: Path) -> None:
    path = png_claiming(tmp_path / "empty.png", 100, 100)
    with pytest.raises(InputError) as e:
        prepare_image(path, **BUDGET)
    assert "damaged" in one_line_error(e, path)


def test_file_over_the_byte_limit(tmp_path: Path) -> None:
    path = halves(tmp_path / "a.png", (64, 64), "PNG")
    with pytest.raises(InputError) as e:
        prepare_image(path, max_file_bytes=100, **BUDGET)
    assert "limit" in one_line_error(e, path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        prepare_image(tmp_path / "nope.png", **BUDGET)
    assert "no such image file" in one_line_error(e, tmp_path / "nope.png")
    with pytest.raises(InputError) as e:
        prepare_image(tmp_path, **BUDGET)
    assert "is a folder, not a file" in one_line_error(e, tmp_path)  # the shared wording (validate.py)


def test_extreme_aspect_ratio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "line.png"
    Image.new("RGB", (3000, 4)).save(path)
    with pytest.raises(InputError) as e:
        prepare_image(path, **BUDGET)
    assert "200:1" in one_line_error(e, path)


def test_formats_with_external_decoders_are_not_opened(tmp_path: Path) -> None:
    path = tmp_path / "fig.eps"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(InputError) as e:
        prepare_image(path, **BUDGET)
    assert "not an image" in one_line_error(e, path)


@pytest.mark.parametrize("fmt", ["WEBP", "GIF", "BMP", "TIFF"])
def test_other_common_formats(tmp_path: Path, fmt: str) -> None:
    img = prepare_image(halves(tmp_path / f"x.{fmt.lower()}", (300, 200), fmt), **BUDGET)
    assert img.rgb.shape == (img.height, img.width, 3)
    assert img.rgb[img.height // 2, 5, 0] > 200


def test_fit_size_invariants() -> None:
    assert fit_size(640, 480, 256 * 256, 1024 * 1024) == (640, 480)
    assert fit_size(2048, 2048, 256 * 256, 1024 * 1024) == (1024, 1024)
    for w in (33, 100, 799, 1024, 1920, 4000, 12000):
        for h in (33, 100, 799, 1080, 3000):
            tw, th = fit_size(w, h, 256 * 256, 1024 * 1024)
            assert tw % 32 == 0 and th % 32 == 0
            assert 256 * 256 <= tw * th <= 1024 * 1024, (w, h, tw, th)
            # one scale factor explains both sides to within a 32-pixel rounding step: aspect kept
            lo = max((tw - 32) / w, (th - 32) / h)
            hi = min((tw + 32) / w, (th + 32) / h)
            assert lo <= hi, (w, h, tw, th)


def test_looks_like_image_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spaced = halves(tmp_path / "my shot (1).PNG", (64, 64), "PNG")
    (tmp_path / "notes.txt").write_text("x")
    assert looks_like_image_path(str(spaced)) == spaced
    assert looks_like_image_path(f"  '{spaced}'\n") == spaced
    assert looks_like_image_path(f'"{spaced}"') == spaced
    assert looks_like_image_path(spaced.as_uri()) == spaced
    assert (
        looks_like_image_path(str(spaced).replace(" ", "\\ ").replace("(", "\\(").replace(")", "\\)"))
        == spaced
    )
    assert looks_like_image_path("~/my shot (1).PNG") == spaced
    assert looks_like_image_path(str(tmp_path / "missing.png")) is None
    assert looks_like_image_path(str(tmp_path / "notes.txt")) is None
    assert looks_like_image_path(f"{spaced}\n{spaced}") is None
    assert looks_like_image_path("hello there") is None
    assert looks_like_image_path("") is None


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    outcome: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(outcome, fifo), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "prepare_image blocked on a FIFO"
    assert isinstance(outcome[0], InputError)
    assert str(outcome[0]) == f"{fifo}: is not a regular file (a FIFO)"


def _catch(outcome: list[BaseException], path: Path) -> None:
    try:
        prepare_image(path, **BUDGET)
    except BaseException as e:
        outcome.append(e)


def test_odd_names_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        prepare_image("a\0b.png", **BUDGET)
    assert "NUL" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError) as e:
        prepare_image("~no-such-user-q35/x.png", **BUDGET)
    assert str(e.value).startswith("~no-such-user-q35/x.png: no such image file")


def _grey_png(path: Path, values: np.ndarray, bitdepth: int, color_type: int) -> Path:
    """A PNG written byte by byte (Pillow cannot save 16-bit grey+alpha): `values` big-endian rows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = values.shape[:2]
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


RAMP16 = np.array([0, 1000, 16384, 32768, 49152, 65535], dtype=np.uint16)  # 1000: white, before the fix


def _ramp_of(img: PreparedImage) -> list[int]:
    """The grey level of each of the 6 vertical bands, from the middle row of the scaled image."""
    row = img.rgb[img.height // 2, :, 0].astype(int)
    band = img.width / 6
    assert (img.rgb[..., 0] == img.rgb[..., 1]).all() and (img.rgb[..., 1] == img.rgb[..., 2]).all()
    return [int(row[int(band * (k + 0.5))]) for k in range(6)]


def _bands(values: np.ndarray, height: int = 64, width: int = 384) -> np.ndarray:
    return np.repeat(np.repeat(values[None, :], height, axis=0), width // len(values), axis=1)


EXPECTED = [0, 4, 64, 128, 191, 255]  # 65535 -> 255: each 16-bit value * 255 / 65535, rounded


@pytest.mark.parametrize("kind", ["png I;16", "tiff I;16", "tiff I;16B", "tiff I (16-bit values)"])
def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path: Path, kind: str) -> None:
    bands = _bands(RAMP16)
    if kind == "png I;16":
        path = _grey_png(tmp_path / "g.png", bands, 16, 0)
    elif kind == "tiff I;16":
        path = tmp_path / "g.tif"
        Image.fromarray(bands).save(path)  # uint16: mode I;16
    elif kind == "tiff I;16B":
        path = tmp_path / "g.tif"
        big = bands.astype(">u2")
        Image.frombuffer("I;16B", big.shape[::-1], big.tobytes(), "raw", "I;16B", 0, 1).save(path)
    else:
        path = tmp_path / "g.tif"
        Image.fromarray(bands.astype(np.int32)).save(path)  # int32: mode I
    assert Image.open(path).mode == kind.split()[1]
    assert _ramp_of(prepare_image(path, **BUDGET)) == EXPECTED


def test_16_bit_grey_with_alpha_keeps_its_levels(tmp_path: Path) -> None:
    la = np.stack([_bands(RAMP16), np.full((64, 384), 65535, dtype=np.uint16)], axis=-1)
    path = _grey_png(tmp_path / "la.png", la, 16, 4)
    assert Image.open(path).mode == "RGBA"  # Pillow reduces 16-bit grey+alpha itself, by the high byte
    assert _ramp_of(prepare_image(path, **BUDGET)) == [int(v) >> 8 for v in RAMP16]


def test_32_bit_integer_and_float_greyscale_are_scaled_by_their_range(tmp_path: Path) -> None:
    ints = tmp_path / "i.tif"  # beyond 16 bits: its own range, lowest black, highest white
    Image.fromarray(
        _bands(np.array([-1000, 0, 1 << 20, 1 << 24, 1 << 28, (1 << 31) - 1], dtype=np.int32))
    ).save(ints)
    levels = _ramp_of(prepare_image(ints, **BUDGET))
    assert levels[0] == 0 and levels[-1] == 255 and levels == sorted(levels)
    unit = tmp_path / "unit.tif"  # 0..1 floats: 1.0 is white (it came out black, clipped to 0..1 of 255)
    Image.fromarray(_bands(np.array([0, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=np.float32))).save(unit)
    assert _ramp_of(prepare_image(unit, **BUDGET)) == [0, 64, 128, 191, 230, 255]
    wide = tmp_path / "wide.tif"  # other floats, with a NaN: by their finite range
    Image.fromarray(_bands(np.array([-50, np.nan, 0, 50, 100, 150], dtype=np.float32))).save(wide)
    assert _ramp_of(prepare_image(wide, **BUDGET)) == [0, 0, 64, 128, 191, 255]
