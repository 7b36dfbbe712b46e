import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facestudio.errors import ImageError
from facestudio.imaging import load_image, read_png_metadata, save_png, to_rgb


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming a huge size, with almost no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (8, 6)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    out = np.asarray(load_image(_encoded(Image.fromarray(values))))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(load_image(_encoded(rgba)))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]


def test_palette_with_transparency():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.info["transparency"] = 0
    out = np.asarray(load_image(_encoded(image, transparency=0)))
    assert out[0, 0].tolist() == [10, 20, 30]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 10))  # a white square top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_encoded(image, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    assert np.asarray(out)[5, 15].mean() > 200  # top-left square is now top-right


def test_real_rgba_png_loads(faces_dir):
    assert Image.open(faces_dir / "32bit.png").mode == "RGBA"
    image = load_image(faces_dir / "32bit.png")
    assert image.mode == "RGB" and image.size == (626, 1200)


@pytest.mark.parametrize("data, needle", [
    (b"", "empty"),
    (b"this is a text file, not an image\n", "not a supported image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a supported image"),  # would run Ghostscript
])
def test_non_images_are_refused(tmp_path, data, needle):
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=needle) as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_truncated_jpeg_is_refused(tmp_path, faces_dir):
    for cut in (2_000, 100_000):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes((faces_dir / "obama.jpg").read_bytes()[:cut])
        with pytest.raises(ImageError, match="truncated or corrupt"):
            load_image(path)


def test_decompression_bomb_is_refused_from_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def test_pixel_cap_is_ours():
    data = _encoded(Image.new("RGB", (200, 100)))
    with pytest.raises(ImageError, match=r"200x100 pixels .* above the limit"):
        load_image(data, max_pixels=10_000)
    assert load_image(data, max_pixels=20_000).size == (200, 100)


def test_too_small_and_missing(tmp_path):
    with pytest.raises(ImageError, match="1x1 pixels; at least 32x32"):
        load_image(_encoded(Image.new("RGB", (1, 1))), min_side=32)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_save_png_is_atomic_and_keeps_metadata(tmp_path):
    path = tmp_path / "sub" / "out.png"
    image = Image.new("RGB", (5, 5), (1, 2, 3))
    save_png(image, path, {"prompt": "an astronaut", "seed": 7})
    assert read_png_metadata(path) == {"prompt": "an astronaut", "seed": 7}
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))

    class Unserialisable:
        pass

    with pytest.raises(TypeError):  # a failure while writing leaves the old file whole and no temporary
        save_png(Image.new("RGB", (5, 5)), path, {"bad": Unserialisable()})
    assert read_png_metadata(path)["seed"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]


def test_crash_while_writing_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_png(Image.new("RGB", (5, 5), (9, 9, 9)), path, {"v": 1})

    def half_write(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_png(Image.new("RGB", (5, 5)), path, {"v": 2})
    monkeypatch.undo()
    assert read_png_metadata(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_no_overwrite_mode_permissions_and_ai_label(tmp_path):
    import os

    path = tmp_path / "a.png"
    save_png(Image.new("RGB", (4, 4)), path, {"ai_generated": True, "seed": 1})
    assert Image.open(path).text["AI-generated"] == "true"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_current_umask()
    with pytest.raises(FileExistsError):
        save_png(Image.new("RGB", (4, 4)), path, {"seed": 2}, overwrite=False)
    assert read_png_metadata(path)["seed"] == 1
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
    save_png(Image.new("RGB", (4, 4)), tmp_path / "b.png", {"seed": 3}, overwrite=False)
    assert "AI-generated" not in Image.open(tmp_path / "b.png").text


def _current_umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
