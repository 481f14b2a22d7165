"""Files for the media tests, made in the test (Pillow, pillow-heif, ffmpeg): nothing binary is committed."""
from __future__ import annotations

import io
import secrets
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pillow_heif import from_pillow

GPS_LATITUDE = (31.0, 13.0, 52.0)


def jpeg(width: int = 1200, height: int = 800, *, orientation: int = 1, gps: bool = False,
         colour: tuple[int, int, int] = (20, 120, 200)) -> bytes:
    """A JPEG whose EXIF says how to rotate it and, with ``gps``, where it was taken."""
    image = Image.new("RGB", (width, height), colour)
    image.paste((250, 250, 250), (0, 0, width // 4, height // 4))  # a corner to see the rotation by
    exif = Image.Exif()
    exif[0x0112] = orientation
    if gps:
        exif[0x8825] = {1: "N", 2: GPS_LATITUDE, 3: "E", 4: (121.0, 28.0, 10.0)}
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes(), comment=b"taken at home")
    return out.getvalue()


def png(width: int = 640, height: int = 480, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def heic(width: int = 900, height: int = 600) -> bytes:
    out = io.BytesIO()
    from_pillow(Image.new("RGB", (width, height), (90, 160, 60))).save(out)
    return out.getvalue()


def gif(frames: int, size: int = 64) -> bytes:
    images = [Image.new("RGB", (size, size), (n * 7 % 256, 40, 90)) for n in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims to be ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def video(tmp_path: Path, container: str = "mp4", seconds: float = 1.0, size: str = "320x240") -> bytes:
    """A short test-pattern video made by ffmpeg (skipped where ffmpeg is missing)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    target = tmp_path / f"clip-{secrets.token_hex(4)}.{container}"
    codec = ["-c:v", "libvpx", "-b:v", "200k"] if container == "webm" else ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10:duration={seconds}",
                    *codec, str(target)], check=True, timeout=60)
    return target.read_bytes()


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "leidaBoundary7MA4YWxk") -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data body: each part is (name, filename, bytes)."""
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                      f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def exif_of(data: bytes) -> dict[int, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return dict(image.getexif())
