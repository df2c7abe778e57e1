"""Image attachments: real files made with Pillow; bad ones refused by their header, before decoding."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from q35local.images import MAX_SOURCE_PIXELS, fit_size, looks_like_image_path, prepare_image
from quantize.errors import InputError

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
    assert "directory" in one_line_error(e, tmp_path)


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
