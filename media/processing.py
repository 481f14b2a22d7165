"""What the server makes of an uploaded file: its real type, checked, cleaned and thumbnailed.

Nothing the client says about a file is believed: not its name, not its
Content-Type. The type is read from the bytes; only the accepted formats'
decoders are ever tried; an image's dimensions and frame count are read from its
header and checked before any pixel is decoded, so a decompression bomb costs
nothing. Images are decoded and written again: EXIF rotation applied, then every
metadata block (EXIF with GPS, XMP, comments) left behind, and whatever trails
the image (a polyglot's HTML) dropped with it. HEIC/HEIF from iPhones is stored
as JPEG, which every WeChat webview shows. Videos keep their bytes; ffmpeg, when
installed, reads their size and duration and makes a poster frame.

Everything here blocks: it runs in the media room's worker processes, never on
the event loop.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from .stores import NoSpace, full_disk_as_no_space

log = logging.getLogger("leida_chat.media")

register_heif_opener()

#: Pillow's format name -> what is stored (HEIF is stored as JPEG)
IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
                 "HEIF": "image/jpeg"}
#: ISO BMFF brands (bytes 8-12 of an ``ftyp`` box) of the accepted video containers
MP4_BRANDS = {b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"dash", b"mmp4",
              b"MSNV", b"3gp4", b"3gp5", b"3gp6"}
MOV_BRANDS = {b"qt  "}
ACCEPTED = "JPEG, PNG, GIF, WebP, HEIC/HEIF pictures and MP4, MOV, WebM videos"
#: what an animation keeps of its header when written again: timing and transparency, no metadata
ANIMATION_KEYS = frozenset({"duration", "loop", "transparency", "background", "disposal", "blend"})
#: the long side of a thumbnail or poster, in pixels: sharp on a phone's chat bubble
THUMBNAIL_PIXELS = 400
JPEG_QUALITY = 90
THUMBNAIL_QUALITY = 80
#: longest ffprobe or ffmpeg may take on one video
FFMPEG_SECONDS = 30


class Refused(ValueError):
    """The file is not something the chat accepts; the message says why, in words a person reads."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_video_bytes: int
    max_image_pixels: int
    max_frames: int


@dataclass
class Processed:
    """What to store: ``file`` (and ``thumbnail``, if any) are temporary files for the media store."""

    kind: str  # "image" or "video"
    content_type: str
    file: Path
    size: int
    sha256: str
    width: int | None
    height: int | None
    duration: float | None
    thumbnail: Path | None
    thumbnail_size: int


def sniff_kind(head: bytes) -> str | None:
    """"video" for the accepted video containers, "image" for anything else worth trying as a picture."""
    if head[4:8] == b"ftyp" and head[8:12] in MP4_BRANDS | MOV_BRANDS:
        return "video"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM, or Matroska (refused later)
        return "video"
    return "image" if head else None


def process_upload(source: Path, limits: Limits) -> Processed:
    """Check and convert the uploaded file at ``source``; Refused if it is not acceptable.
    The files it makes sit beside ``source``; ``source`` itself may become ``Processed.file``."""
    with open(source, "rb") as file:
        head = file.read(64)
    kind = sniff_kind(head)
    if kind is None:
        raise Refused("the file is empty", "empty")
    if kind == "video":
        return _video(source, head, limits)
    if source.stat().st_size > limits.max_image_bytes:
        raise Refused(f"a picture may be at most {limits.max_image_bytes} bytes", "max_size")
    try:
        with full_disk_as_no_space():
            return _image(source, limits)
    except (Refused, NoSpace, MemoryError):
        raise
    except Exception as error:  # whatever a decoder makes of hostile bytes: the file's fault, never a 500
        log.info("picture refused, its decoder failed: %s: %s", type(error).__name__, error)
        raise Refused("the picture is damaged or truncated", "damaged") from None


# -- pictures ---------------------------------------------------------------------


def _image(source: Path, limits: Limits) -> Processed:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=list(IMAGE_FORMATS))
        except UnidentifiedImageError:
            raise _not_accepted() from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise Refused(f"a picture may have at most {limits.max_image_pixels} pixels", "max_pixels") from None
        except (OSError, SyntaxError, ValueError):
            raise Refused("the picture is damaged or truncated", "damaged") from None
    with image:
        fmt = image.format or ""
        width, height = image.size
        if width < 1 or height < 1 or width * height > limits.max_image_pixels:
            raise Refused(f"a picture may have at most {limits.max_image_pixels} pixels "
                          f"(this one is {width} x {height})", "max_pixels")
        frames = _frame_count(image, limits)
        return _rewrite(image, fmt, frames, source)


def _frame_count(image: Image.Image, limits: Limits) -> int:
    """Frames counted from the headers, stopping as soon as the count or the pixels of all
    frames pass their budget (a GIF's count needs a walk, which must not decode a bomb)."""
    if not getattr(image, "is_animated", False):
        return 1
    width, height = image.size
    frames = 0
    try:
        while True:
            image.seek(frames)
            frames += 1
            if frames > limits.max_frames:
                raise Refused(f"an animated picture may have at most {limits.max_frames} frames", "max_frames")
            if frames * width * height > limits.max_image_pixels:
                raise Refused(f"an animated picture may have at most {limits.max_image_pixels} pixels in all its "
                              f"frames (this one has more than {frames - 1} frames of {width} x {height})",
                              "max_pixels")
    except EOFError:
        pass
    image.seek(0)
    return frames


def _rewrite(image: Image.Image, fmt: str, frames: int, source: Path) -> Processed:
    """The picture written again without its metadata, and its thumbnail."""
    target = source.with_name(source.name + ".image")
    content_type = IMAGE_FORMATS[fmt]
    icc = image.info.get("icc_profile")
    extra = {"icc_profile": icc} if icc else {}
    if frames > 1:  # GIF, WebP or APNG animation: every frame, nothing else
        image.load()
        image.info = {key: value for key, value in image.info.items() if key in ANIMATION_KEYS}
        save_format = {"GIF": "GIF", "WEBP": "WEBP", "PNG": "PNG"}[fmt]
        image.save(target, format=save_format, save_all=True, **extra)
        image.seek(0)
        first = image.convert("RGBA")
        width, height = image.size
    else:
        upright = ImageOps.exif_transpose(image)
        upright.load()
        upright.info = {}  # EXIF (GPS), XMP, comments, text chunks: none of it is written again
        width, height = upright.size
        if content_type == "image/jpeg":
            rgb = upright if upright.mode in ("RGB", "L") else upright.convert("RGB")
            rgb.save(target, format="JPEG", quality=JPEG_QUALITY, **extra)
        elif fmt == "PNG":
            upright.save(target, format="PNG", **extra)
        elif fmt == "WEBP":
            upright.save(target, format="WEBP", quality=JPEG_QUALITY, **extra)
        else:  # a GIF of one frame
            upright.save(target, format="GIF")
        first = upright
    thumbnail = source.with_name(source.name + ".thumb")
    _save_thumbnail(first, thumbnail)
    source.unlink(missing_ok=True)
    return Processed(
        kind="image", content_type=content_type, file=target, size=target.stat().st_size, sha256=sha256(target),
        width=width, height=height, duration=None, thumbnail=thumbnail, thumbnail_size=thumbnail.stat().st_size,
    )


def _save_thumbnail(image: Image.Image, target: Path) -> None:
    """A JPEG of at most THUMBNAIL_PIXELS on the long side, transparency laid on white."""
    copy = image.copy()
    copy.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    if copy.mode in ("RGBA", "LA", "P", "PA"):
        copy = copy.convert("RGBA")
        flat = Image.new("RGB", copy.size, (255, 255, 255))
        flat.paste(copy, mask=copy.getchannel("A"))
        copy = flat
    elif copy.mode != "RGB":
        copy = copy.convert("RGB")
    copy.save(target, format="JPEG", quality=THUMBNAIL_QUALITY)


def _not_accepted() -> Refused:
    return Refused(f"this type of file is not accepted: only {ACCEPTED}", "unsupported_type")


# -- videos -----------------------------------------------------------------------


def _video(source: Path, head: bytes, limits: Limits) -> Processed:
    if head[:4] == b"\x1a\x45\xdf\xa3":
        if b"webm" not in head:
            raise _not_accepted()  # Matroska (.mkv) and other EBML documents
        content_type = "video/webm"
    elif head[8:12] in MOV_BRANDS:
        content_type = "video/quicktime"
    else:
        content_type = "video/mp4"
    size = source.stat().st_size
    if size > limits.max_video_bytes:
        raise Refused(f"a video may be at most {limits.max_video_bytes} bytes", "max_size")
    width, height, duration = probe(source)
    if width is None and shutil.which("ffprobe") is not None:
        raise Refused("the video is damaged or truncated: no picture could be read from it", "damaged")
    poster = source.with_name(source.name + ".thumb")
    if not make_poster(source, poster):
        poster.unlink(missing_ok=True)
    has_poster = poster.exists()
    return Processed(
        kind="video", content_type=content_type, file=source, size=size, sha256=sha256(source),
        width=width, height=height, duration=duration, thumbnail=poster if has_poster else None,
        thumbnail_size=poster.stat().st_size if has_poster else 0,
    )


def probe(video: Path) -> tuple[int | None, int | None, float | None]:
    """(width, height, duration) as ffprobe reads them; Nones where it is missing or cannot tell."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None, None, None
    try:
        result = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height:format=duration",
             "-of", "json", str(video)],
            capture_output=True, timeout=FFMPEG_SECONDS, check=False,
        )
        found = json.loads(result.stdout or b"{}")
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return None, None, None
    streams = found.get("streams") or [{}]
    duration = (found.get("format") or {}).get("duration")
    try:
        seconds = round(float(duration), 3) if duration is not None else None
    except ValueError:
        seconds = None
    return _positive(streams[0].get("width")), _positive(streams[0].get("height")), seconds


def make_poster(video: Path, target: Path) -> bool:
    """A JPEG poster frame, as large as a thumbnail; False where ffmpeg is missing or fails."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        log.info("ffmpeg is not installed: videos get no poster frame (apt-get install ffmpeg)")
        return False
    scale = f"scale='if(gt(iw,ih),{THUMBNAIL_PIXELS},-2)':'if(gt(iw,ih),-2,{THUMBNAIL_PIXELS})'"
    try:
        result = subprocess.run(
            [ffmpeg, "-v", "error", "-nostdin", "-y", "-i", str(video), "-frames:v", "1", "-vf", scale,
             "-q:v", "4", "-f", "image2", "-c:v", "mjpeg", str(target)],
            capture_output=True, timeout=FFMPEG_SECONDS, check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0 and target.exists() and target.stat().st_size > 0


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
