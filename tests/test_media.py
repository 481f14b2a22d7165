"""Pictures and videos through the real app: upload, check, send, render, serve, on both backends.

Every upload goes over HTTP as a multipart body, as a page sends it; what comes
back is checked from the bytes the server stores and serves (Pillow reads them
back), never from what the server says of them.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import ujson
from media_files import exif_of, gif, heic, jpeg, multipart, png, png_header_only, video
from PIL import Image

from conftest import Account, text
from media import MediaSettings


def upload_of(data: bytes, filename: str = "photo.jpg") -> tuple[bytes, str]:
    return multipart(("file", filename, data))


async def upload(api, customer: Account, radar_user: Account, data: bytes, filename: str = "photo.jpg") -> dict:
    status, body = await api.upload(customer, *upload_of(data, filename), u_id=radar_user.id)
    assert status == 200 and body["code"] == 200, body
    return body["data"]


async def fetch(api, url: str, **headers: str):
    """A served URL, fetched as a browser would (no signature of its own)."""
    path = urlsplit(url)
    return await api.raw("GET", f"{api.base_url}{path.path}?{path.query}", headers=headers, follow_redirects=False)


def media_files(media) -> list[Path]:
    """Every file under a real name in the local store (temporaries apart)."""
    root = media.settings.directory
    return sorted(path for path in root.rglob("*") if path.is_file() and "tmp" not in path.relative_to(root).parts)


def temporaries(media) -> list[Path]:
    return sorted(media.temporary.iterdir())


# -- the happy path ------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_customer_photo_is_uploaded_sent_and_shown_to_both_sides(api, store, customer, radar_user):
    uploaded = await upload(api, customer, radar_user, jpeg(1200, 800, orientation=6, gps=True))
    assert set(uploaded) == {"attachment_id", "kind", "url", "thumbnail_url", "content_type", "size", "width",
                             "height", "duration"}
    # EXIF orientation 6: the stored picture is turned upright, so it is 800 wide and 1200 high
    assert uploaded["kind"] == "image" and uploaded["content_type"] == "image/jpeg"
    assert (uploaded["width"], uploaded["height"]) == (800, 1200) and uploaded["duration"] is None

    sent = await api.customer_send(customer, radar_user.id, {"info_type": 4, "attachment_id": uploaded["attachment_id"]})
    assert sent["code"] == 200, sent
    (item,) = (await api.customer_getmsg(customer, radar_user.id, last_id=0))["data"]["ret_data"]
    for key in ("attachment_id", "content_type", "size", "width", "height"):
        assert item[key] == uploaded[key]
    assert item["info_type"] == 4 and item["url"] and item["thumbnail_url"] and "thumbnail" not in item
    (radar,) = (await api.radar_getmsg(radar_user, customer.id))["data"]["ret_data"]
    (history,) = (await api.radar_history(radar_user, customer.id))["data"]["ret_data"]
    (mine,) = (await api.customer_history(customer, radar_user.id))["data"]["ret_data"]
    for other in (radar, history, mine):
        assert (other["url"], other["width"], other["height"]) == (item["url"], 800, 1200)
    contact = (await api.contacts(radar_user))["data"]["ret_data"][0]["last_msg"]
    assert contact["thumbnail_url"] == item["thumbnail_url"]

    served = await fetch(api, item["url"])
    assert served.code == 200 and served.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(served.body)) as image:
        assert image.format == "JPEG" and image.size == (800, 1200)
        assert image.getpixel((700, 10))[0] > 240  # the white corner, top right once upright
    assert exif_of(served.body) == {}  # rotation applied, then every EXIF tag (GPS too) gone
    assert b"taken at home" not in served.body and b"Exif" not in served.body
    record = await store.attachment(uploaded["attachment_id"])
    assert record.sha256 == hashlib.sha256(served.body).hexdigest() and record.size == len(served.body)
    assert record.message_id == sent["data"]["id"]

    thumbnail = await fetch(api, item["thumbnail_url"])
    assert thumbnail.code == 200 and thumbnail.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.body)) as image:
        assert image.format == "JPEG" and max(image.size) == 400 and image.size == (267, 400)


@pytest.mark.gen_test
async def test_served_files_carry_headers_no_browser_can_be_tricked_by(api, customer, radar_user, media):
    uploaded = await upload(api, customer, radar_user, jpeg())
    served = await fetch(api, uploaded["url"])
    headers = served.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    disposition = headers["Content-Disposition"]
    assert disposition.startswith("inline; ") and f"filename*=UTF-8''{uploaded['attachment_id']}.jpg" in disposition
    assert "photo" not in disposition  # never the client's own name
    cache = headers["Cache-Control"]
    assert cache.startswith("private, max-age=")
    expires = int(dict(part.split("=") for part in urlsplit(uploaded["url"]).query.split("&"))["e"])
    assert int(cache.rsplit("=", 1)[1]) <= expires - time.time() + 1
    assert 7 * 86400 <= expires - time.time() <= 8 * 86400 + 1
    # the same picture's URL stays the same for a while, so caches work
    again = await api.customer_history(customer, radar_user.id)
    assert again["code"] == 200
    assert media.links.path(uploaded["attachment_id"]) == media.links.path(uploaded["attachment_id"], now=time.time() + 60)


@pytest.mark.gen_test
async def test_a_radar_user_sends_a_picture_too(api, customer, radar_user):
    status, body = await api.upload(radar_user, *upload_of(png()), side="radar", customer_id=customer.id)
    assert status == 200 and body["data"]["content_type"] == "image/png", body
    sent = await api.radar_send(radar_user, customer.id, {"info_type": 4, "attachment_id": body["data"]["attachment_id"]})
    assert sent["code"] == 200, sent
    (item,) = (await api.customer_getmsg(customer, radar_user.id))["data"]["ret_data"]
    assert item["send_type"] == 1 and item["content_type"] == "image/png" and (item["width"], item["height"]) == (640, 480)
    thumbnail = await fetch(api, item["thumbnail_url"])
    with Image.open(io.BytesIO(thumbnail.body)) as image:  # transparency laid on white, as JPEG
        assert image.format == "JPEG" and image.mode == "RGB"


@pytest.mark.gen_test
async def test_an_iphone_heic_photo_is_stored_as_jpeg(api, customer, radar_user):
    uploaded = await upload(api, customer, radar_user, heic(900, 600), "IMG_0001.HEIC")
    assert uploaded["content_type"] == "image/jpeg" and (uploaded["width"], uploaded["height"]) == (900, 600)
    served = await fetch(api, uploaded["url"])
    assert Image.open(io.BytesIO(served.body)).format == "JPEG"


@pytest.mark.gen_test
async def test_an_animated_gif_keeps_its_frames(api, customer, radar_user):
    uploaded = await upload(api, customer, radar_user, gif(12), "funny.gif")
    served = await fetch(api, uploaded["url"])
    with Image.open(io.BytesIO(served.body)) as image:
        assert image.format == "GIF" and image.n_frames == 12


@pytest.mark.gen_test(timeout=60)
async def test_a_video_keeps_its_bytes_and_is_served_in_ranges(api, customer, radar_user, tmp_path):
    clip = video(tmp_path, "mp4", seconds=2)
    uploaded = await upload(api, customer, radar_user, clip, "clip.png")  # a name that lies changes nothing
    assert uploaded["kind"] == "video" and uploaded["content_type"] == "video/mp4"
    assert (uploaded["width"], uploaded["height"]) == (320, 240) and 1.5 < uploaded["duration"] < 2.5
    assert uploaded["thumbnail_url"]  # ffmpeg's poster frame
    sent = await api.customer_send(customer, radar_user.id, {"info_type": 5, "attachment_id": uploaded["attachment_id"]})
    assert sent["code"] == 200, sent
    (item,) = (await api.radar_getmsg(radar_user, customer.id))["data"]["ret_data"]
    assert item["duration"] == uploaded["duration"]
    whole = await fetch(api, item["url"])
    assert whole.body == clip and whole.headers["Content-Type"] == "video/mp4"
    part = await fetch(api, item["url"], Range="bytes=100-199")
    assert part.code == 206 and part.body == clip[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(clip)}"
    poster = await fetch(api, item["thumbnail_url"])
    assert Image.open(io.BytesIO(poster.body)).size == (400, 300)


@pytest.mark.gen_test(timeout=60)
async def test_webm_and_mov_are_videos_too(api, customer, radar_user, tmp_path):
    webm = await upload(api, customer, radar_user, video(tmp_path, "webm"), "a.webm")
    mov = await upload(api, customer, radar_user, video(tmp_path, "mov"), "a.mov")
    assert (webm["content_type"], mov["content_type"]) == ("video/webm", "video/quicktime")


@pytest.mark.gen_test
async def test_an_old_clients_url_only_picture_works_as_before(api, customer, radar_user):
    content = {"info_type": 4, "url": "https://img.example/a.png"}
    assert (await api.customer_send(customer, radar_user.id, content))["code"] == 200
    (item,) = (await api.radar_getmsg(radar_user, customer.id))["data"]["ret_data"]
    assert item["url"] == "https://img.example/a.png" and "thumbnail_url" not in item and "attachment_id" not in item


# -- the bytes are not trusted ---------------------------------------------------------


REFUSED_FILES = {
    "svg with a script": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "a.svg"),
    "html named .jpg": (b"<!doctype html><html><script>alert(document.cookie)</script></html>", "a.jpg"),
    "zip": (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 200, "photos.zip"),
    "pdf": (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n" + b"\x00" * 100, "a.pdf"),
    "executable": (b"\x7fELF\x02\x01\x01" + b"\x00" * 200, "a.jpg"),
    "png named .mp4": (png(), "a.mp4"),
    "mp4 header, no video": (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 4000, "a.mp4"),
    "matroska": (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x88matroska" + b"\x00" * 100, "a.webm"),
}


@pytest.mark.gen_test
@pytest.mark.parametrize("case", sorted(REFUSED_FILES))
async def test_what_is_not_a_picture_or_video_is_refused_naming_what_is(api, customer, radar_user, media, case):
    data, name = REFUSED_FILES[case]
    status, body = await api.upload(customer, *upload_of(data, name), u_id=radar_user.id)
    if case == "png named .mp4":  # the bytes decide: it is a PNG, and a fine one
        assert body["code"] == 200 and body["data"]["content_type"] == "image/png"
        return
    assert status == 200 and body["code"] == 402, body
    (error,) = body["data"]["file"]
    if case == "mp4 header, no video":  # an MP4 by its first bytes, and nothing ffprobe can read
        assert error["code"] == "damaged" and "video" in error["message"]
        assert media_files(media) == [] and temporaries(media) == []
        return
    assert error["code"] == "unsupported_type"
    assert "JPEG, PNG, GIF, WebP, HEIC/HEIF" in error["message"] and "MP4, MOV, WebM" in error["message"]
    assert media_files(media) == [] and temporaries(media) == []


@pytest.mark.gen_test
async def test_a_polyglot_is_stored_as_a_picture_only(api, customer, radar_user):
    polyglot = jpeg() + b"<html><script>alert(1)</script></html>"
    uploaded = await upload(api, customer, radar_user, polyglot, "x.html")
    served = await fetch(api, uploaded["url"])
    assert b"<script>" not in served.body and served.headers["Content-Type"] == "image/jpeg"
    assert served.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
@pytest.mark.parametrize("case", ["truncated jpeg", "bomb header", "empty", "no file part", "two files",
                                  "not multipart", "too many frames"])
async def test_bad_uploads_are_402s_that_name_the_field(api, customer, radar_user, media, case):
    whole = jpeg()
    bodies = {
        "truncated jpeg": upload_of(whole[: len(whole) // 2]),
        "bomb header": upload_of(png_header_only(100_000, 100_000), "bomb.png"),
        "empty": upload_of(b""),
        "no file part": multipart(("photo", "a.jpg", whole)),
        "two files": multipart(("file", "a.jpg", whole), ("file", "b.jpg", whole)),
        "not multipart": (whole, "image/jpeg"),
        "too many frames": upload_of(gif(501, size=8), "long.gif"),
    }
    status, body = await api.upload(customer, *bodies[case], u_id=radar_user.id)
    assert status == 200 and body["code"] == 402 and list(body["data"]) == ["file"], body
    expected = {"truncated jpeg": "damaged", "bomb header": "max_pixels", "empty": "empty", "no file part": "required",
                "two files": "too_many", "not multipart": "required", "too many frames": "max_frames"}[case]
    assert body["data"]["file"][0]["code"] == expected
    assert media_files(media) == [] and temporaries(media) == []


@pytest.mark.gen_test
async def test_the_peer_is_checked_before_the_body_is_read(api, customer, radar_user):
    status, body = await api.upload(customer, *upload_of(jpeg()), u_id=999)
    assert body["code"] == 402 and "u_id" in body["data"]
    status, body = await api.upload(customer, *upload_of(jpeg()))
    assert body["code"] == 402 and body["data"]["u_id"][0]["code"] == "required"
    status, body = await api.upload(Account(customer.id, "wrong token"), *upload_of(jpeg()), u_id=radar_user.id)
    assert body["code"] == 400 and body["msg"] == "token异常"
    status, body = await api.upload(radar_user, *upload_of(jpeg()), side="radar", customer_id=424242)
    assert body["code"] == 402 and "customer_id" in body["data"]


# -- limits ------------------------------------------------------------------------------

SMALL = MediaSettings(max_image_bytes=50_000, max_video_bytes=200_000)


class TestLimits:
    @pytest.fixture
    def media_settings(self, tmp_path):
        return MediaSettings(directory=tmp_path / "media", max_image_bytes=SMALL.max_image_bytes,
                             max_video_bytes=SMALL.max_video_bytes)

    @pytest.mark.gen_test
    async def test_one_byte_over_the_picture_limit_is_a_413_and_leaves_nothing(self, api, customer, radar_user, media):
        picture = jpeg(64, 64)
        padded = picture + b"\0" * (SMALL.max_image_bytes + 1 - len(picture))  # trailing bytes: still a JPEG
        status, body = await api.upload(customer, *upload_of(padded), u_id=radar_user.id)
        assert status == 413 and body["code"] == 413 and "at most 50000 bytes" in body["msg"], body
        assert media_files(media) == [] and temporaries(media) == []
        exactly = picture + b"\0" * (SMALL.max_image_bytes - len(picture))
        status, body = await api.upload(customer, *upload_of(exactly), u_id=radar_user.id)
        assert body["code"] == 200, body

    @pytest.mark.gen_test
    async def test_a_declared_length_past_every_limit_is_refused_before_the_body(self, api, customer, radar_user):
        body, content_type = upload_of(b"x" * (SMALL.max_video_bytes + 70_000))
        status, answer = await api.upload(customer, body, content_type, u_id=radar_user.id)
        assert status == 413 and answer["code"] == 413

    @pytest.mark.gen_test
    async def test_the_global_body_limit_still_applies_to_other_routes(self, api, customer, radar_user):
        big = ujson.dumps(text("x" * 70_000))
        response = await api.raw("POST", api.url("/zhugeleida/gongzhonghao/chat/send_msg/0", customer),
                                 f"u_id={radar_user.id}&content={big}")
        assert response.code == 413


# -- whose attachment -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_an_attachment_is_only_its_uploaders_in_its_conversation(
        api, customer, other_customer, radar_user, other_radar_user):
    mine = (await upload(api, customer, radar_user, jpeg()))["attachment_id"]

    async def send(account: Account, user: Account, attachment_id: str, info_type: int = 4, **form) -> dict:
        return await api.customer_send(account, user.id, {"info_type": info_type, "attachment_id": attachment_id},
                                       **form)

    cases = {
        "someone else's": await send(other_customer, radar_user, mine),
        "another conversation": await send(customer, other_radar_user, mine),
        "never uploaded": await send(customer, radar_user, "0" * 32),
        "a picture as a video": await send(customer, radar_user, mine, info_type=5),
        "the radar user sending it": await api.radar_send(radar_user, customer.id,
                                                          {"info_type": 4, "attachment_id": mine}),
        "not an id": await send(customer, radar_user, "../../etc/passwd"),
        "with a text message": await api.customer_send(customer, radar_user.id,
                                                       {"info_type": 1, "msg": "hi", "attachment_id": mine}),
    }
    for case, answer in cases.items():
        assert answer["code"] == 402 and list(answer["data"]) == ["attachment_id"], (case, answer)
        assert answer["data"]["attachment_id"][0]["message"], case

    first = await send(customer, radar_user, mine, client_msg_id="photo-1")
    assert first["code"] == 200, first
    retry = await send(customer, radar_user, mine, client_msg_id="photo-1")  # the response was lost: same answer
    assert retry["data"] == first["data"]
    again = await send(customer, radar_user, mine, client_msg_id="photo-2")
    assert again["code"] == 402 and "used by another message" in again["data"]["attachment_id"][0]["message"]
    items = (await api.customer_getmsg(customer, radar_user.id, last_id=0))["data"]["ret_data"]
    assert [item["id"] for item in items] == [first["data"]["id"]]


@pytest.mark.gen_test
async def test_two_sends_racing_for_one_attachment_store_one_message(api, customer, radar_user):
    mine = (await upload(api, customer, radar_user, jpeg()))["attachment_id"]
    answers = await asyncio.gather(*(
        api.customer_send(customer, radar_user.id, {"info_type": 4, "attachment_id": mine}) for _ in range(5)))
    assert sorted(answer["code"] for answer in answers) == [200, 402, 402, 402, 402]
    items = (await api.customer_getmsg(customer, radar_user.id, last_id=0))["data"]["ret_data"]
    assert len(items) == 1


# -- URLs -------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_tampered_or_expired_url_is_a_403_and_an_unknown_id_a_404(api, customer, radar_user, media):
    uploaded = await upload(api, customer, radar_user, jpeg())
    attachment_id = uploaded["attachment_id"]
    url = urlsplit(uploaded["url"])
    query = dict(part.split("=") for part in url.query.split("&"))
    base = f"{api.base_url}/media/{attachment_id}"
    tampered = [f"{base}?e={query['e']}&s={query['s'][:-2]}AA", f"{base}?e={int(query['e']) + 1}&s={query['s']}",
                f"{base}", f"{base}/thumbnail?e={query['e']}&s={query['s']}"]
    for address in tampered:
        response = await api.raw("GET", address)
        assert response.code == 403, address
        assert ujson.loads(response.body)["code"] == 403
    past = int(time.time()) - 10
    expired = f"{base}?e={past}&s={media.links.signature(attachment_id, 'file', past)}"
    assert (await api.raw("GET", expired)).code == 403
    unknown = "f" * 32
    response = await api.raw("GET", api.base_url + media.links.path(unknown))
    assert response.code == 404
    assert (await api.raw("GET", f"{api.base_url}/media/not-an-id")).code == 404


@pytest.mark.gen_test
async def test_media_urls_follow_base_url_and_the_forwarded_scheme(api, customer, radar_user, media):
    uploaded = await upload(api, customer, radar_user, jpeg())
    assert uploaded["url"].startswith(api.base_url + "/media/")


# -- lifecycle --------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_unclaimed_uploads_are_swept_and_claimed_ones_kept(api, store, customer, radar_user, media):
    kept = (await upload(api, customer, radar_user, jpeg()))["attachment_id"]
    dropped = (await upload(api, customer, radar_user, png()))["attachment_id"]
    assert (await api.customer_send(customer, radar_user.id, {"info_type": 4, "attachment_id": kept}))["code"] == 200
    assert len(media_files(media)) == 4  # two files, two thumbnails
    assert await media.sweep_unclaimed(store) == 0  # not old enough yet
    removed = await media.sweep_unclaimed(store, now=time.time() + 25 * 3600)
    assert removed == 1
    assert await store.attachment(dropped) is None and await store.attachment(kept) is not None
    assert [path.name for path in media_files(media)] == sorted([kept, f"{kept}.thumb"])
    late = await api.customer_send(customer, radar_user.id, {"info_type": 4, "attachment_id": dropped})
    assert late["code"] == 402
    usage = await store.attachment_usage()
    assert usage["image"]["count"] == 1 and usage["image"]["unclaimed_count"] == 0


@pytest.mark.gen_test
async def test_a_multipart_body_cut_off_mid_file_leaves_nothing(http_server, base_url, customer, radar_user, media):
    from conftest import sign

    body, content_type = upload_of(jpeg(2000, 2000) * 3)
    query = "&".join(f"{k}={v}" for k, v in {**sign(customer), "u_id": radar_user.id}.items())
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /zhugeleida/gongzhonghao/chat/upload/0?{query} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:len(body) // 2])
    await writer.drain()
    for _ in range(100):  # the half body reaches the server's temporary file
        if temporaries(media) and temporaries(media)[0].stat().st_size > 0:
            break
        await asyncio.sleep(0.02)
    assert temporaries(media)
    writer.transport.abort()
    for _ in range(100):
        if not temporaries(media):
            break
        await asyncio.sleep(0.02)
    assert temporaries(media) == [] and media_files(media) == []
    del reader
