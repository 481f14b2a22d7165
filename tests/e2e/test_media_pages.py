"""Pictures in the demo pages, and the radar console on a phone, in real headless Chromium.

Against the real server in demo mode (the fixtures of test_demo_pages.py): the
radar console at 390 px is two screens, the contact list and the conversation,
with a back button and the browser's Back between them; a picture chosen in the
customer page's file input is uploaded and shows on the radar console as a
thumbnail in a box of the picture's aspect ratio, which opens the full picture;
the radar user sends one back; a file the server refuses shows the server's
reason in the page; LeidaChat.sendFile reports progress and, retried with the
same client_msg_id, stores the message once. Screenshots land in e2e-screenshots/.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
from test_demo_pages import (  # noqa: F401  (browser, demo_server: fixtures; the import skips without Chromium)
    browser,
    demo_server,
    expect_message,
    open_pages,
    screenshot,
    send,
    sync_api,
)

from conftest import Account, sign

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
expect = sync_api.expect


def make_picture(path: Path, width: int, height: int) -> Path:
    """A picture with colour blocks (so a screenshot shows which way up it is), saved by its suffix."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (38, 120, 205))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width // 2, height // 2], fill=(245, 180, 40))
    draw.rectangle([width // 2, height // 2, width, height], fill=(205, 50, 85))
    r = min(width, height) // 5
    draw.ellipse([width // 2 - r, height // 2 - r, width // 2 + r, height // 2 + r], fill=(250, 250, 250))
    image.save(path)
    return path


def demo_accounts(base: str) -> tuple[Account, Account]:
    """The demo's radar user and its first customer (/demo/accounts.json answers this machine)."""
    with urllib.request.urlopen(f"{base}/demo/accounts.json", timeout=10) as response:
        accounts = json.load(response)
    rep, customer = accounts["radar_user"], accounts["customers"][0]
    return Account(rep["id"], rep["token"]), Account(customer["id"], customer["token"])


def upload_directly(base: str, customer: Account, rep: Account, name: str, data: bytes, content_type: str) -> dict:
    """The customer's upload, sent by hand: what the server answers for this file (any HTTP status)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    query = urlencode({**sign(customer), "u_id": rep.id})
    request = urllib.request.Request(f"{base}/zhugeleida/gongzhonghao/chat/upload/0?{query}", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def reason(envelope: dict) -> str:
    """The sentence a page shows for a refused upload: the file's first message, else msg."""
    data = envelope.get("data") or {}
    fields = data.get("file") if isinstance(data, dict) else None
    return fields[0]["message"] if fields else envelope["msg"]


def picture_in(page, nth: int = -1):
    pictures = page.locator("[data-testid=messages] [data-testid=picture]")
    return pictures.nth(nth) if nth >= 0 else pictures.last


def expect_loaded(picture, timeout_ms: int = 5000) -> None:
    picture.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                   arg=picture.element_handle(timeout=timeout_ms), timeout=timeout_ms)


def assert_aspect(picture, width: int, height: int) -> dict:
    box = picture.bounding_box()
    assert box is not None
    assert box["width"] <= 201 and box["height"] <= 261, box
    assert box["width"] / box["height"] == pytest.approx(width / height, rel=0.02), box
    return box


# -- the radar console on a phone ------------------------------------------------------------------


def test_the_radar_console_on_a_phone_is_a_contact_list_and_a_full_screen_conversation(browser, demo_server):
    base = demo_server.base
    customer = browser.new_context(**PHONE).new_page()
    radar = browser.new_context(**PHONE).new_page()
    customer.goto(f"{base}/demo/customer.html?customer_id=1")
    radar.goto(f"{base}/demo/radar.html")
    for page in (customer, radar):
        expect(page.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
    contacts = radar.locator("[data-testid=contacts]")
    conversation = radar.locator("[data-testid=conversation]")
    expect(contacts).to_be_visible()
    expect(radar.locator("[data-testid=contact]")).to_have_count(3)
    expect(conversation).to_be_hidden()
    expect(radar.locator("[data-testid=pane]")).to_be_hidden()  # no "pick a customer" sliver beside the list
    contacts_box = contacts.bounding_box()
    assert contacts_box is not None and contacts_box["width"] >= 380, contacts_box
    screenshot(radar, "radar-phone-list")

    radar.locator("[data-testid=contact][data-customer-id='1']").click()
    expect(conversation).to_be_visible()
    expect(contacts).to_be_hidden()
    expect(radar.locator("[data-testid=back]")).to_be_visible()
    box = conversation.bounding_box()
    assert box is not None and box["width"] >= 380 and box["x"] == 0, box
    expect_message(radar, "很高兴为您服务", timeout_ms=5000)  # the demo's greeting, from history
    send(radar, "您好，我在手机上回复您 😀")
    expect_message(customer, "我在手机上回复您")
    send(customer, "收到，谢谢王经理")
    expect_message(radar, "谢谢王经理")
    composer = radar.locator("[data-testid=input]").bounding_box()
    assert composer is not None and composer["x"] + composer["width"] <= 390, composer  # not cut off at the right
    screenshot(radar, "radar-phone-conversation")

    radar.locator("[data-testid=back]").click()  # the header's ‹ 返回
    expect(contacts).to_be_visible()
    expect(conversation).to_be_hidden()
    assert "customer_id" not in radar.url

    send(customer, "还在吗？")  # the conversation is closed now: it counts as unread in the list
    expect(radar.locator("[data-testid=contact][data-customer-id='1'] [data-testid=unread]")).to_have_text(
        "1", timeout=5000)

    radar.locator("[data-testid=contact][data-customer-id='1']").click()
    expect_message(radar, "还在吗？", timeout_ms=5000)
    radar.go_back()  # the browser's Back returns to the list, not away from the console
    expect(contacts).to_be_visible()
    expect(conversation).to_be_hidden()
    assert radar.url.endswith("/demo/radar.html"), radar.url
    radar.go_forward()
    expect(conversation).to_be_visible()
    expect_message(radar, "还在吗？", timeout_ms=5000)


def test_the_radar_console_on_a_desktop_keeps_the_list_beside_the_conversation(browser, demo_server):
    customer, radar = open_pages(browser, demo_server.base)  # 1280 x 800
    expect(radar.locator("[data-testid=contacts]")).to_be_visible()
    expect(radar.locator("[data-testid=conversation]")).to_be_visible()
    expect(radar.locator("[data-testid=back]")).to_be_hidden()
    contacts = radar.locator("[data-testid=contacts]").bounding_box()
    conversation = radar.locator("[data-testid=conversation]").bounding_box()
    assert contacts is not None and conversation is not None
    assert contacts["x"] + contacts["width"] <= conversation["x"], (contacts, conversation)


# -- pictures ---------------------------------------------------------------------------------------


def test_a_picture_from_the_customer_shows_on_the_radar_console_and_opens_full_size(browser, demo_server,
                                                                                      tmp_path):
    errors: list[str] = []
    customer, radar = open_pages(browser, demo_server.base)
    for page in (customer, radar):
        page.on("pageerror", lambda error: errors.append(str(error)))
    expect_message(radar, "很高兴为您服务", timeout_ms=5000)

    customer.locator("[data-testid=file-input]").set_input_files(str(make_picture(tmp_path / "photo.png", 1200, 800)))
    mine = picture_in(customer)
    expect(mine).to_have_count(1, timeout=5000)  # at once, from the file itself, while it uploads
    assert_aspect(mine, 1200, 800)
    sent = customer.locator("[data-testid=message]", has=customer.locator("[data-testid=picture]")).last
    expect(sent).not_to_have_attribute("data-id", "", timeout=10_000)  # stored: it has its id
    expect(customer.locator("[data-testid=progress]")).to_have_count(0)
    expect(sent.locator("button.failed")).to_have_count(0)

    theirs = picture_in(radar)
    expect(theirs).to_have_count(1, timeout=5000)
    box = assert_aspect(theirs, 1200, 800)  # the box is reserved from width/height, before it loads
    expect_loaded(theirs)
    assert theirs.bounding_box() == box  # loading did not change it
    thumbnail = theirs.get_attribute("src") or ""
    assert thumbnail.startswith("http") and "/thumbnail?" in thumbnail, thumbnail  # thumbnail_url, not url
    expect(radar.locator("[data-testid=contact][data-customer-id='1'] .c-preview")).to_have_text("[图片]")
    customer.wait_for_timeout(300)
    screenshot(customer, "customer-picture")
    screenshot(radar, "radar-picture")

    theirs.click()
    viewer = radar.locator("[data-testid=viewer]")
    expect(viewer).to_be_visible()
    full = viewer.locator("img")
    expect_loaded(full)
    assert full.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [1200, 800]  # the picture itself
    assert "/thumbnail" not in (full.get_attribute("src") or "")
    screenshot(radar, "radar-picture-viewer")
    viewer.click()
    expect(viewer).to_have_count(0)

    # the radar user answers with a tall picture; the customer sees it, and both after a reload
    radar.locator("[data-testid=file-input]").set_input_files(str(make_picture(tmp_path / "tall.jpg", 600, 900)))
    tall = picture_in(customer, 1)
    expect(tall).to_have_count(1, timeout=5000)
    assert_aspect(tall, 600, 900)
    expect_loaded(tall)
    answer = radar.locator("[data-testid=message]", has=radar.locator("[data-testid=picture]")).last
    expect(answer).not_to_have_attribute("data-id", "", timeout=10_000)
    customer.reload()
    expect(customer.locator("[data-testid=messages] [data-testid=picture]")).to_have_count(2, timeout=5000)
    assert_aspect(picture_in(customer, 0), 1200, 800)
    assert_aspect(picture_in(customer, 1), 600, 900)
    expect_loaded(picture_in(customer, 0))
    assert errors == []


@pytest.mark.parametrize("name, data, content_type", [
    ("not-a-picture.jpg", "这不是一张图片，只是几个字。\n".encode(), "image/jpeg"),
    ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script>'
                    b'<rect width="10" height="10"/></svg>', "image/svg+xml"),
])
def test_a_file_the_server_refuses_shows_its_reason_in_the_page(browser, demo_server, name, data, content_type):
    rep, first_customer = demo_accounts(demo_server.base)
    refused = upload_directly(demo_server.base, first_customer, rep, name, data, content_type)
    assert refused["code"] != 200, refused
    customer = browser.new_context(**PHONE).new_page()
    customer.goto(f"{demo_server.base}/demo/customer.html?customer_id={first_customer.id}")
    expect(customer.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)

    customer.locator("[data-testid=file-input]").set_input_files(
        files=[{"name": name, "mimeType": content_type, "buffer": data}])
    error = customer.locator("[data-testid=send-error]")
    expect(error).to_have_text(reason(refused), timeout=5000)
    expect(customer.locator("[data-testid=messages] button.failed")).to_have_count(1)
    customer.reload()  # nothing was stored
    expect(customer.locator("[data-testid=state]")).to_have_attribute("data-state", "live", timeout=10_000)
    expect(customer.locator("[data-testid=message]")).to_have_count(1)  # the greeting alone
    if name.endswith(".jpg"):
        customer.locator("[data-testid=file-input]").set_input_files(
            files=[{"name": name, "mimeType": content_type, "buffer": data}])
        expect(error).to_have_text(reason(refused), timeout=5000)
        screenshot(customer, "customer-refused-file")


def test_send_file_reports_progress_and_a_retry_with_the_same_client_msg_id_is_stored_once(browser, demo_server,
                                                                                           tmp_path):
    rep, first_customer = demo_accounts(demo_server.base)
    page = browser.new_page()
    page.goto(f"{demo_server.base}/demo/customer.html?customer_id={first_customer.id}")
    picture = make_picture(tmp_path / "small.png", 300, 200).read_bytes()
    result = page.evaluate("""async ([account, token, rep, bytes]) => {
        const chat = new LeidaChat({side: "customer", accountId: account, token, peerId: rep});
        const file = new File([new Uint8Array(bytes)], "small.png", {type: "image/png"});
        const progress = [];
        const first = await chat.sendFile(file, {clientMsgId: "lc-e2e-retry", onProgress: p => progress.push(p)});
        const again = await new LeidaChat({side: "customer", accountId: account, token, peerId: rep})
            .sendFile(file, {clientMsgId: "lc-e2e-retry"});
        const history = await chat.history({currentPage: 1, length: 100});
        let refused = null;
        await chat.sendFile(new File(["plain text"], "x.jpg", {type: "image/jpeg"}))
            .catch(err => { refused = {code: err.code, msg: err.msg, text: LeidaChat.uploadErrorText(err)}; });
        return {first, again, progress, refused,
                stored: history.ret_data.filter(item => item.attachment_id).map(item => ({
                    id: item.id, info_type: item.info_type, width: item.width, height: item.height}))};
    }""", [first_customer.id, first_customer.token, rep.id, list(picture)])
    assert result["first"]["upload"]["kind"] == "image"
    assert (result["first"]["upload"]["width"], result["first"]["upload"]["height"]) == (300, 200)
    assert result["again"]["id"] == result["first"]["id"]  # the server's first answer for a repeated id
    assert result["stored"] == [{"id": result["first"]["id"], "info_type": 4, "width": 300, "height": 200}]
    last = result["progress"][-1]
    assert last["total"] > 0 and last["loaded"] == last["total"], result["progress"]
    assert result["refused"]["code"] not in (200, "network"), result["refused"]
    assert result["refused"]["msg"] and result["refused"]["text"], result["refused"]



def test_an_iphone_heic_photo_and_a_20_mb_video_go_through_the_customer_page(browser, demo_server, tmp_path):
    """What a customer sends from an iPhone: a HEIC photo (stored as JPEG, which the
    console shows) and a 20 MB video (kept as it is, with a poster frame)."""
    import shutil
    import subprocess

    from PIL import Image
    from pillow_heif import from_pillow

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    heic = tmp_path / "IMG_0042.HEIC"
    from_pillow(Image.open(make_picture(tmp_path / "source.png", 1000, 750))).save(heic)
    clip = tmp_path / "IMG_0043.MP4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25:duration=8",
                    "-f", "lavfi", "-i", "nullsrc=s=640x360:d=8", "-filter_complex", "[0][1]blend=all_mode=difference,noise=alls=60:allf=t",
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "20M", "-minrate", "20M", "-maxrate", "20M",
                    "-bufsize", "20M", "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=120)
    assert clip.stat().st_size >= 18 * 1024 * 1024, clip.stat().st_size
    errors: list[str] = []
    customer, radar = open_pages(browser, demo_server.base)
    for page in (customer, radar):
        page.on("pageerror", lambda error: errors.append(str(error)))
    expect_message(radar, "很高兴为您服务", timeout_ms=5000)

    customer.locator("[data-testid=file-input]").set_input_files(str(heic))
    photo = picture_in(radar)
    expect(photo).to_have_count(1, timeout=15_000)
    assert_aspect(photo, 1000, 750)
    expect_loaded(photo)  # a JPEG thumbnail of the HEIC, which Chromium could not show itself

    customer.locator("[data-testid=file-input]").set_input_files(str(clip))
    video = radar.locator("[data-testid=messages] [data-testid=video]")
    expect(video).to_have_count(1, timeout=60_000)
    assert "/media/" in (video.get_attribute("src") or "")
    assert "/thumbnail?" in (video.get_attribute("poster") or "")  # ffmpeg's poster frame
    box = video.bounding_box()
    assert box is not None and box["width"] / box["height"] == pytest.approx(640 / 360, rel=0.02)
    sent = customer.locator("[data-testid=message]", has=customer.locator("[data-testid=video]")).last
    expect(sent).not_to_have_attribute("data-id", "", timeout=10_000)
    radar.wait_for_timeout(500)
    screenshot(radar, "radar-heic-and-video")
    assert errors == []
