#!/usr/bin/env python3
"""Picture and video uploads: their throughput, the chat beside them, and the server's memory while they stream.

Three parts, each against the real server (``leida_chat.py serve``) started as
a subprocess on a temp database and media directory, over 127.0.0.1 only:

1. **throughput**: 4 concurrent uploaders (``--concurrency``) send ~1 MB JPEG
   photos (made here with Pillow: a gradient with noise, 2048x1536, so that the
   server's decode, re-encode and thumbnail are real work) and ~20 MB MP4
   videos (made once with Debian's ffmpeg, ``testsrc2`` at 8 Mbit/s; skipped
   with a message without ffmpeg), first on the local store, then on the S3
   store against moto's server (tests/s3.py's ``S3Server``): MB/s and uploads/s
   from the first byte sent to the last answer, per-upload time p50/p99, and
   the server's CPU (and moto's).
2. **chat**: longpoll.py's load (10,000 held getmsg, replies at 500/s) without
   and with 4 uploaders of ~5 MB photos (4032x3024) running the whole time, in
   one run, ``--rounds`` rounds alternating the order: delivery p50/p99 side by
   side, and the upload rate achieved meanwhile. The uploaders run in a child
   process (this script with ``--uploader-child``), so that their writes never
   delay the loop that timestamps deliveries. Target: p99 with uploads within
   1.5x of p99 without.
3. **rss**: 20 uploads of 50 MB (an MP4 ``ftyp`` box, then one ``free`` box of
   zeros) stream at once, each paced at 1 MB every 50 ms so that all 20 are in
   flight together; the server's VmRSS (``/proc/<pid>/status``), sampled every
   10 ms, at idle (after one warm-up upload) and at its peak. Target: no more
   than a few MB (5) above idle.

The generated files are cached in ``$TMPDIR/leida-bench-uploads/``; each
server's media directory is deleted when it stops (its log and database stay,
as the other benches leave theirs). Prints a table per part and one JSON line.
The load average (/proc/loadavg) is recorded at the start and end of each part.

    python bench/uploads.py                         # all three parts, about 3 minutes
    python bench/uploads.py --quick                 # small counts: a smoke run in under a minute
    python bench/uploads.py --parts throughput --stores local
    python bench/uploads.py --parts chat --rounds 5 --waiters 10000 --replies 5000 --rate 500
    python bench/uploads.py --parts rss --streams 20 --stream-mb 50 --pace-mb 1 --pace-ms 50
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from longpoll import RADAR_SEND, hold  # noqa: E402

from harness import (  # noqa: E402
    ROOT,
    ChatServer,
    Connection,
    add_backend_arguments,
    at_rate,
    cpu_percent,
    percentile,
    print_table,
    raise_open_file_limit,
    sample,
    sample_all,
    signed_path,
    until,
)

CUSTOMER_UPLOAD = "/zhugeleida/gongzhonghao/chat/upload/0"
REPLY_BODY = "customer_id={}&content=%7B%22info_type%22%3A1%2C%22msg%22%3A%22bench%22%7D"
CACHE = Path(tempfile.gettempdir()) / "leida-bench-uploads"
BOUNDARY = "leida-bench-" + secrets.token_hex(12)
#: how a pre-built body is handed to the socket: slices of this size, each drained before the next
CHUNK = 256 * 1024
MB = 1_000_000
#: part 3's target: peak RSS while the uploads stream, above idle
RSS_TARGET_MB = 5.0
#: part 2's target: p99 with uploads / p99 without
CHAT_TARGET_RATIO = 1.5

QUICK = {"photos": 6, "videos": 3, "waiters": 1000, "replies": 500, "rounds": 1, "settle_seconds": 1.0,
         "streams": 4, "stream_mb": 10}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- files to upload ---------------------------------------------------------------


def make_photo(target_bytes: int) -> Path:
    """A JPEG of about ``target_bytes``: a colour gradient blended with Gaussian noise, the blend
    found by bisection; 2048x1536 up to 2 MB, else 4032x3024 (a phone camera's 12 MP)."""
    from PIL import Image

    width, height = (2048, 1536) if target_bytes <= 2 * MB else (4032, 3024)
    path = CACHE / f"photo-{width}x{height}-{target_bytes}.jpg"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    gradient = Image.linear_gradient("L").resize((width, height))
    base = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                               gradient.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 64) for _ in range(3)])
    low, high, best = 0.0, 1.0, b""
    for _ in range(10):
        alpha = (low + high) / 2
        buffer = io.BytesIO()
        Image.blend(base, noise, alpha).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        if abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        if abs(len(data) - target_bytes) <= target_bytes * 0.03:
            break
        low, high = (alpha, high) if len(data) < target_bytes else (low, alpha)
    partial = path.with_suffix(".partial")
    partial.write_bytes(best)
    partial.rename(path)
    return path


def make_video(target_bytes: int) -> Path | None:
    """An H.264 MP4 of about ``target_bytes`` (testsrc2, 1280x720, 30 fps, constant 8 Mbit/s);
    None without ffmpeg."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    path = CACHE / f"video-{target_bytes}.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.mp4")
    seconds = max(1.0, target_bytes * 8 / 8_000_000)
    subprocess.run(
        [ffmpeg, "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
         "-t", f"{seconds:.2f}", "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "8M", "-minrate", "8M",
         "-maxrate", "8M", "-bufsize", "8M", "-x264-params", "nal-hrd=cbr", "-pix_fmt", "yuv420p",
         "-movflags", "+faststart", str(partial)],
        check=True, timeout=300)
    partial.rename(path)
    return path


# -- request bodies and the upload client ------------------------------------------


@dataclass
class Body:
    """A multipart/form-data body as pieces written one after another (never joined):
    the form's head, the file's bytes, its tail."""

    pieces: list[bytes | memoryview]
    file_size: int

    @property
    def length(self) -> int:
        return sum(len(piece) for piece in self.pieces)


def form_head(filename: str, content_type: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def file_body(path: Path, content_type: str) -> Body:
    """The file read once; the body is slices of it (no copy per request)."""
    data = memoryview(path.read_bytes())
    slices = [data[start:start + CHUNK] for start in range(0, len(data), CHUNK)]
    return Body([form_head(path.name, content_type), *slices, FORM_TAIL], len(data))


def padded_video_body(total: int, piece: int) -> Body:
    """``total`` bytes that sniff as an MP4 (an ``ftyp`` box, then one ``free`` box of zeros
    to the end), in pieces of ``piece`` bytes: one zero-filled buffer referenced again and again."""
    ftyp = struct.pack(">I4s4sI", 24, b"ftyp", b"isom", 0x200) + b"isomiso2"
    header = ftyp + struct.pack(">I4s", total - len(ftyp), b"free")
    zeros = bytes(piece)
    pieces: list[bytes | memoryview] = [form_head("padded.mp4", "video/mp4") + header + zeros[:piece - len(header)]]
    left = total - piece
    while left > 0:
        pieces.append(zeros if left >= piece else memoryview(zeros)[:left])
        left -= piece
    pieces[-1] = bytes(pieces[-1]) + FORM_TAIL
    return Body(pieces, total)


@dataclass
class Upload:
    """One upload: times are time.monotonic() (one clock for every process on the host)."""

    size: int
    started: float = 0.0
    first_byte: float = 0.0
    last_byte: float = 0.0
    answered: float = 0.0
    status: int = 0
    code: int | None = None
    kind: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.code == 200


async def upload(port: int, path: str, body: Body, pace_seconds: float = 0.0, timeout: float = 300.0) -> Upload:
    """POST ``body`` to ``path`` on a new connection, each piece drained before the next
    (the n-th not before ``n * pace_seconds`` after the first); the answer, parsed."""
    result = Upload(body.file_size, started=time.monotonic())
    try:
        await asyncio.wait_for(_upload(port, path, body, pace_seconds, result), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"
    result.answered = time.monotonic()
    return result


async def _upload(port: int, path: str, body: Body, pace_seconds: float, result: Upload) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                     f"Content-Length: {body.length}\r\n\r\n".encode())
        result.first_byte = time.monotonic()
        try:
            for index, piece in enumerate(body.pieces):
                if pace_seconds:
                    delay = result.first_byte + index * pace_seconds - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                writer.write(piece)
                await writer.drain()
            result.last_byte = time.monotonic()
        except ConnectionError:  # answered (413) and closed before the body was all sent
            result.error = "connection closed while sending"
        head = await reader.readuntil(b"\r\n\r\n")
        result.status = int(head[9:12])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        answer = await (reader.readexactly(length) if length is not None else reader.read(1 << 20))
        try:
            envelope = json.loads(answer)
            result.code = envelope.get("code")
            result.kind = (envelope.get("data") or {}).get("kind")
            if result.code != 200:
                result.error = f"{result.code}: {envelope.get('msg')}"
        except ValueError:
            result.error = f"HTTP {result.status}, not JSON"
    finally:
        writer.close()


async def uploaders(port: int, customer: tuple[int, str], user_id: int, body: Body, concurrency: int,
                    count: int, seconds: float, stop: asyncio.Event | None = None) -> list[Upload]:
    """``concurrency`` clients uploading ``body`` one after another, ``count`` uploads in all at most,
    none started after ``seconds`` or once ``stop`` is set."""
    results: list[Upload] = []
    deadline = time.monotonic() + seconds
    started = 0

    async def client() -> None:
        nonlocal started
        while started < count and time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            started += 1
            results.append(await upload(port, signed_path(CUSTOMER_UPLOAD, customer[0], customer[1], u_id=user_id),
                                        body))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


async def uploader_child(spec: dict[str, Any]) -> None:
    """``--uploader-child``: uploaders until a line arrives on stdin (or count/time run out);
    prints ``started``, then the uploads as one JSON line."""
    if spec.get("nice"):  # stands for clients on other machines: they do not take the server's cores first
        os.nice(spec["nice"])
    body = file_body(Path(spec["file"]), spec["content_type"])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stop, daemon=True).start()
    print("started", flush=True)
    results = await uploaders(spec["port"], tuple(spec["customer"]), spec["user_id"], body, spec["concurrency"],
                              spec["count"], spec["seconds"], stop)
    print(json.dumps([asdict(result) for result in results]), flush=True)


class UploaderProcess:
    """This script as ``--uploader-child``: the uploads run in another process than the chat's
    load generator, so that writing them never delays the loop that timestamps deliveries."""

    async def start(self, spec: dict[str, Any]) -> UploaderProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--uploader-child", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if line.strip() != b"started":
            raise RuntimeError(f"uploader child did not start: {line!r}")
        return self

    async def stop(self, timeout: float = 120) -> list[Upload]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        try:
            output = await asyncio.wait_for(self.proc.stdout.read(), timeout)
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        return [Upload(**fields) for fields in json.loads(output.strip().splitlines()[-1])]


# -- servers -----------------------------------------------------------------------


def chat_server(args: argparse.Namespace, customers: int, env: dict[str, str] | None = None) -> ChatServer:
    """A ChatServer whose media directory sits in its own temp dir (deleted by ``finish``)."""
    server = ChatServer(users=1, customers=customers, env=env, python=args.python, backend=args.backend,
                        processes=args.processes)
    media = Path(args.media_directory) / secrets.token_hex(4) if args.media_directory else server.dir / "media"
    server.env["LEIDA_MEDIA_DIRECTORY"] = str(media)
    return server


def finish(server: ChatServer) -> list[str]:
    """Stop the server, delete its media, and return its log's warnings and errors (at most 5 kinds)."""
    server.stop()
    shutil.rmtree(server.env["LEIDA_MEDIA_DIRECTORY"], ignore_errors=True)
    problems: dict[str, int] = {}
    log = server.dir / "server.log"
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if " WARNING " in line or " ERROR " in line or line.startswith("Traceback"):
            key = line.split(" ", 2)[-1][:160]
            problems[key] = problems.get(key, 0) + 1
    return [f"{count}x {key}" for key, count in list(problems.items())[:5]]


def the_accounts(server: ChatServer) -> tuple[tuple[int, str], tuple[int, str]]:
    """(radar user, the last customer): who uploads, and to whom."""
    return sorted(server.users.items())[0], sorted(server.customers.items())[-1]


# -- part 1: throughput ------------------------------------------------------------


async def throughput_run(server: ChatServer, body: Body, count: int, args: argparse.Namespace,
                         others: list[int]) -> dict[str, Any]:
    (user_id, _), customer = the_accounts(server)
    pids = server.worker_pids
    warm = await upload(server.port, signed_path(CUSTOMER_UPLOAD, customer[0], customer[1], u_id=user_id), body)
    if not warm.ok:
        raise RuntimeError(f"warm-up upload failed: {warm}")
    before, others_before = sample_all(pids), [sample(pid) for pid in others]
    results = await uploaders(server.port, customer, user_id, body, args.concurrency, count, args.part_seconds)
    after, others_after = sample_all(pids), [sample(pid) for pid in others]
    ok = [result for result in results if result.ok]
    wall = max(result.answered for result in results) - min(result.started for result in results)
    times = sorted(result.answered - result.started for result in ok)
    return {
        "file_mb": round(body.file_size / MB, 2),
        "uploads": len(results),
        "ok": len(ok),
        "errors": sorted({result.error or "" for result in results if not result.ok})[:3],
        "kinds": sorted({result.kind or "" for result in ok}),
        "wall_s": round(wall, 2),
        "mb_per_s": round(sum(result.size for result in ok) / MB / wall, 1),
        "uploads_per_s": round(len(ok) / wall, 2),
        "upload_s_p50": round(percentile(times, 0.5), 2),
        "upload_s_p99": round(percentile(times, 0.99), 2),
        "server_cpu_percent": round(cpu_percent(before, after), 1),
        "s3_server_cpu_percent": round(sum(cpu_percent(b, a) for b, a in zip(others_before, others_after,
                                                                              strict=True)), 1) if others else None,
    }


async def part_throughput(args: argparse.Namespace) -> dict[str, Any]:
    photo = file_body(make_photo(int(args.photo_mb * MB)), "image/jpeg")
    video_path = make_video(int(args.video_mb * MB))
    if video_path is None:
        print("ffmpeg is not installed (apt-get install ffmpeg): skipping the video uploads", file=sys.stderr)
    video = file_body(video_path, "video/mp4") if video_path is not None else None
    out: dict[str, Any] = {"loadavg_start": loadavg(), "runs": {}, "server_log": {}}
    for store in args.stores.split(","):
        s3 = None
        env: dict[str, str] | None = None
        if store == "s3":
            sys.path.insert(0, str(ROOT / "tests"))
            from s3 import CREDENTIALS, REGION, S3Server, missing_moto

            reason = missing_moto()
            if reason is not None:
                print(f"skipping the S3 store: {reason}", file=sys.stderr)
                continue
            s3 = S3Server()
            bucket = s3.new_bucket()
            env = {"LEIDA_MEDIA_STORE": "s3", "LEIDA_MEDIA_S3_ENDPOINT": s3.endpoint, "LEIDA_MEDIA_S3_BUCKET": bucket,
                   "AWS_DEFAULT_REGION": REGION, **CREDENTIALS}
        server = chat_server(args, customers=1, env=env).start()
        try:
            others = [s3.proc.pid] if s3 is not None else []
            out["runs"][f"{store} photo"] = await throughput_run(server, photo, args.photos, args, others)
            if video is not None:
                out["runs"][f"{store} video"] = await throughput_run(server, video, args.videos, args, others)
            if s3 is not None:
                out[f"{store}_objects_in_bucket"] = len(s3.keys(bucket))
        finally:
            out["server_log"][store] = finish(server)
            if s3 is not None:
                s3.stop()
    out["loadavg_end"] = loadavg()
    return out


# -- part 2: the chat beside uploads -------------------------------------------------


async def chat_phase(server: ChatServer, args: argparse.Namespace, photo: Path | None) -> dict[str, Any]:
    """longpoll.py's load once: hold every customer's getmsg but the uploader's, then replies at
    ``--rate``; with ``photo``, uploaders of it run from before the replies until they are delivered."""
    (user_id, user_token), uploader_account = the_accounts(server)
    waiting = sorted(server.customers.items())[:args.waiters]
    received: dict[int, float] = {}
    bad: list[int] = []
    connections: list[Connection] = []
    load_start = loadavg()
    for first in range(0, len(waiting), args.connect_batch):
        connections += await asyncio.gather(*(hold(server.port, cid, token, user_id, 55, received, bad)
                                              for cid, token in waiting[first:first + args.connect_batch]))
    await asyncio.sleep(args.settle_seconds)
    held = [cid for cid, _ in waiting if cid not in received]
    targets = held[:args.replies]
    child = None
    if photo is not None:
        child = await UploaderProcess().start({
            "port": server.port, "customer": list(uploader_account), "user_id": user_id, "file": str(photo),
            "content_type": "image/jpeg", "concurrency": args.chat_uploaders, "count": 10_000,
            "seconds": args.replies / args.rate + 60, "nice": args.uploader_nice})
        await asyncio.sleep(args.upload_lead_seconds)  # the uploads in full swing, processing included
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(args.send_connections):
        pool.put_nowait(await Connection.open(server.port))
    sent_at: dict[int, float] = {}
    failures = 0

    async def reply(customer_id: int) -> None:
        nonlocal failures
        connection = await pool.get()
        sent_at[customer_id] = time.perf_counter()
        try:
            status, answer = await connection.request("POST", signed_path(RADAR_SEND, user_id, user_token),
                                                      REPLY_BODY.format(customer_id).encode())
        except ConnectionError:
            failures += 1
            return
        if status != 200 or b'"code":200' not in answer:
            failures += 1
        pool.put_nowait(connection)

    pids = server.worker_pids
    window_start, busy_start = time.monotonic(), sample_all(pids)
    await at_rate(targets, args.rate, time.perf_counter(), reply)
    rate_achieved = len(targets) / (time.monotonic() - window_start)
    await until(lambda: all(cid in received for cid in targets), 10)
    window_end, busy_end = time.monotonic(), sample_all(pids)
    uploads = await child.stop() if child is not None else []
    for connection in connections:
        connection.close()
    while not pool.empty():
        pool.get_nowait().close()
    delivered = [cid for cid in targets if cid in received]
    latencies = sorted((received[cid] - sent_at[cid]) * 1000 for cid in delivered)
    in_window = [u for u in uploads if u.ok and window_start <= u.answered <= window_end]
    window = window_end - window_start
    await asyncio.sleep(args.settle_seconds)  # the server lets go of the closed waiters
    return {
        "uploads": photo is not None,
        "held": len(held),
        "replies": len(targets),
        "rate_achieved": round(rate_achieved, 1),
        "send_failures": failures,
        "delivered": len(delivered),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p90_ms": round(percentile(latencies, 0.90), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "server_cpu_percent": round(cpu_percent(busy_start, busy_end), 1),
        "uploads_per_s": round(len(in_window) / window, 2),
        "upload_mb_per_s": round(sum(u.size for u in in_window) / MB / window, 1),
        "uploads_ok": sum(1 for u in uploads if u.ok),
        "uploads_failed": sum(1 for u in uploads if not u.ok),
        "upload_errors": sorted({u.error or "" for u in uploads if not u.ok})[:3],
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "_latencies": latencies,
    }


async def part_chat(args: argparse.Namespace) -> dict[str, Any]:
    photo = Path(args.chat_file) if args.chat_file else make_photo(int(args.chat_photo_mb * MB))
    out: dict[str, Any] = {"loadavg_start": loadavg(), "photo_mb": round(photo.stat().st_size / MB, 2),
                           "phases": []}
    server = chat_server(args, customers=args.waiters + 1).start()
    pooled: dict[bool, list[float]] = {False: [], True: []}
    try:
        for round_index in range(args.rounds):
            order = (False, True) if round_index % 2 == 0 else (True, False)
            for with_uploads in order:
                phase = await chat_phase(server, args, photo if with_uploads else None)
                pooled[with_uploads] += phase.pop("_latencies")
                out["phases"].append({"round": round_index + 1, **phase})
                print(f"  chat round {round_index + 1}, {'with' if with_uploads else 'without'} uploads: "
                      f"p50 {phase['p50_ms']} ms, p99 {phase['p99_ms']} ms, {phase['uploads_per_s']} uploads/s",
                      file=sys.stderr)
    finally:
        out["server_log"] = finish(server)
    for with_uploads, name in ((False, "without"), (True, "with")):
        phases = [phase for phase in out["phases"] if phase["uploads"] == with_uploads]
        values = sorted(pooled[with_uploads])
        out[name] = {
            "median_p50_ms": round(statistics.median(phase["p50_ms"] for phase in phases), 2),
            "median_p99_ms": round(statistics.median(phase["p99_ms"] for phase in phases), 2),
            "pooled_p50_ms": round(percentile(values, 0.50), 2),
            "pooled_p99_ms": round(percentile(values, 0.99), 2),
            "delivered": sum(phase["delivered"] for phase in phases),
            "replies": sum(phase["replies"] for phase in phases),
        }
    out["p99_ratio"] = round(out["with"]["median_p99_ms"] / out["without"]["median_p99_ms"], 2)
    out["pooled_p99_ratio"] = round(out["with"]["pooled_p99_ms"] / out["without"]["pooled_p99_ms"], 2)
    out["target_met"] = out["p99_ratio"] <= CHAT_TARGET_RATIO
    out["loadavg_end"] = loadavg()
    return out


# -- part 3: memory while uploads stream ---------------------------------------------


class RssSampler(threading.Thread):
    """The server's summed VmRSS every ``interval`` seconds, as (monotonic, MB), for at most ``limit`` s."""

    def __init__(self, pids: list[int], interval: float = 0.01, limit: float = 600) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval, self.limit = pids, interval, limit
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.done.is_set() and time.monotonic() < deadline:
            self.samples.append((time.monotonic(), sample_all(self.pids).rss_mb))
            self.done.wait(self.interval)

    def peak(self, start: float, end: float) -> float | None:
        inside = [rss for at, rss in self.samples if start <= at <= end]
        return max(inside) if inside else None


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def part_rss(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"loadavg_start": loadavg()}
    server = chat_server(args, customers=1).start()
    try:
        (user_id, _), customer = the_accounts(server)
        pids = server.worker_pids

        def path() -> str:
            return signed_path(CUSTOMER_UPLOAD, customer[0], customer[1], u_id=user_id)

        await asyncio.sleep(2)
        out["rss_cold_idle_mb"] = round(sample_all(pids).rss_mb, 1)
        piece = int(args.pace_mb * MB)
        warm = await upload(server.port, path(), padded_video_body(2 * piece, piece))
        out["warm_up"] = "ok" if warm.ok else warm.error
        await asyncio.sleep(2)
        idle = sample_all(pids).rss_mb
        out["rss_idle_mb"] = round(idle, 1)
        body = padded_video_body(int(args.stream_mb * MB), piece)
        sampler = RssSampler(pids)
        sampler.start()
        results = await asyncio.gather(*(upload(server.port, path(), body, args.pace_ms / 1000, timeout=600)
                                          for _ in range(args.streams)))
        sampler.done.set()
        sampler.join(5)
        await asyncio.sleep(2)
        sent = [r for r in results if r.last_byte]
        together = (max(r.first_byte for r in results), min(r.last_byte for r in sent)) if sent else (0, 0)
        streaming = (min(r.first_byte for r in results), max(r.last_byte for r in sent)) if sent else (0, 0)
        answered = (min(r.first_byte for r in results), max(r.answered for r in results))
        peak_together = sampler.peak(*together)
        peak_streaming = sampler.peak(*streaming)
        peak_answered = sampler.peak(*answered)
        out.update({
            "streams": args.streams,
            "stream_mb": args.stream_mb,
            "pace": f"{args.pace_mb} MB every {args.pace_ms} ms",
            "all_in_flight_s": round(together[1] - together[0], 2),
            "streaming_s": round(streaming[1] - streaming[0], 2),
            "until_all_answered_s": round(answered[1] - answered[0], 2),
            "rss_samples": len(sampler.samples),
            "rss_peak_all_in_flight_mb": None if peak_together is None else round(peak_together, 1),
            "rss_peak_streaming_mb": None if peak_streaming is None else round(peak_streaming, 1),
            "rss_peak_until_answered_mb": None if peak_answered is None else round(peak_answered, 1),
            "rss_after_mb": round(sample_all(pids).rss_mb, 1),
            "vm_hwm_mb": round(sum(vm_hwm_mb(pid) for pid in pids), 1),
            "answers": {str(status): sum(1 for r in results if r.status == status)
                        for status in sorted({r.status for r in results})},
            "errors": sorted({r.error or "" for r in results if not r.ok})[:3],
        })
        out["rss_streaming_above_idle_mb"] = (None if peak_streaming is None else round(peak_streaming - idle, 1))
        out["rss_until_answered_above_idle_mb"] = (None if peak_answered is None else round(peak_answered - idle, 1))
        out["target_met"] = peak_streaming is not None and peak_streaming - idle <= RSS_TARGET_MB
    finally:
        out["server_log"] = finish(server)
    out["loadavg_end"] = loadavg()
    return out


# -- tables --------------------------------------------------------------------------


def print_columns(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [["" if value is None else f"{value:,}" if isinstance(value, int) and not isinstance(value, bool)
                         else str(value) for value in row] for row in rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(header))]
    print(f"\n{title}")
    for number, row in enumerate(cells):
        print("  ".join(value.rjust(width) if index else value.ljust(width)
                        for index, (value, width) in enumerate(zip(row, widths, strict=True))))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def report(results: dict[str, Any]) -> None:
    if "throughput" in results:
        part = results["throughput"]
        print_columns(f"uploads: throughput ({part['concurrency']} concurrent uploaders; load {part['loadavg_start']}"
                      f" -> {part['loadavg_end']})",
                      ["store / file", "MB each", "ok/sent", "wall s", "MB/s", "uploads/s", "p50 s", "p99 s",
                       "server CPU %", "moto CPU %"],
                      [[name, run["file_mb"], f"{run['ok']}/{run['uploads']}", run["wall_s"], run["mb_per_s"],
                        run["uploads_per_s"], run["upload_s_p50"], run["upload_s_p99"], run["server_cpu_percent"],
                        run["s3_server_cpu_percent"]] for name, run in part["runs"].items()])
    if "chat" in results:
        part = results["chat"]
        print_columns(f"uploads: the chat beside {part['uploaders']} uploaders of {part['photo_mb']} MB photos "
                      f"(load {part['loadavg_start']} -> {part['loadavg_end']})",
                      ["round", "uploads", "held", "rate/s", "delivered", "p50 ms", "p90 ms", "p99 ms", "max ms", "server CPU %",
                       "uploads/s", "upload MB/s", "load start", "load end"],
                      [[phase["round"], "with" if phase["uploads"] else "without", phase["held"],
                        phase["rate_achieved"], f"{phase['delivered']}/{phase['replies']}", phase["p50_ms"], phase["p90_ms"], phase["p99_ms"],
                        phase["max_ms"], phase["server_cpu_percent"], phase["uploads_per_s"],
                        phase["upload_mb_per_s"], phase["loadavg_start"], phase["loadavg_end"]]
                       for phase in part["phases"]])
        print_table("chat summary", [
            ("median p50 without / with (ms)", f"{part['without']['median_p50_ms']} / {part['with']['median_p50_ms']}"),
            ("median p99 without / with (ms)", f"{part['without']['median_p99_ms']} / {part['with']['median_p99_ms']}"),
            ("pooled p99 without / with (ms)", f"{part['without']['pooled_p99_ms']} / {part['with']['pooled_p99_ms']}"),
            ("p99 ratio (medians; pooled)", f"{part['p99_ratio']}; {part['pooled_p99_ratio']}"),
            (f"target p99 ratio <= {CHAT_TARGET_RATIO}", "met" if part["target_met"] else "NOT met"),
        ])
    if "rss" in results:
        part = results["rss"]
        print_table(f"uploads: server RSS while {part.get('streams')} uploads of {part.get('stream_mb')} MB stream "
                    f"(load {part['loadavg_start']} -> {part['loadavg_end']})",
                    [(name, value) for name, value in part.items()
                     if name not in ("loadavg_start", "loadavg_end", "server_log")]
                    + [(f"target: <= {RSS_TARGET_MB} MB above idle", "met" if part.get("target_met") else "NOT met")])
    for name, part in results.items():
        logs = part.get("server_log") if isinstance(part, dict) else None
        lines = [line for value in (logs.values() if isinstance(logs, dict) else [logs or []]) for line in value]
        if lines:
            print(f"\nserver log, {name}: " + "\n  ".join(["", *lines]))


# -- main ----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_file_limit()
    results: dict[str, Any] = {}
    parts = args.parts.split(",")
    if "throughput" in parts:
        results["throughput"] = {"concurrency": args.concurrency,
                                 **await asyncio.wait_for(part_throughput(args), args.part_timeout)}
    if "chat" in parts:
        results["chat"] = {"uploaders": args.chat_uploaders, "waiters": args.waiters, "rate": args.rate,
                           **await asyncio.wait_for(part_chat(args), args.part_timeout)}
    if "rss" in parts:
        results["rss"] = await asyncio.wait_for(part_rss(args), args.part_timeout)
    return results


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--uploader-child":
        asyncio.run(uploader_child(json.loads(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run: " + ", ".join(
        f"{key.replace('_', '-')} {value}" for key, value in QUICK.items()))
    parser.add_argument("--parts", default="throughput,chat,rss", help="which parts, comma-separated")
    parser.add_argument("--stores", default="local,s3", help="part 1's media stores, comma-separated")
    parser.add_argument("--concurrency", type=int, default=4, help="part 1's concurrent uploaders")
    parser.add_argument("--photos", type=int, default=40, help="part 1: photo uploads per store")
    parser.add_argument("--videos", type=int, default=12, help="part 1: video uploads per store")
    parser.add_argument("--photo-mb", type=float, default=1.0, help="part 1's photo size")
    parser.add_argument("--video-mb", type=float, default=20.0, help="part 1's video size")
    parser.add_argument("--part-seconds", type=float, default=120, help="part 1: no upload started after this")
    parser.add_argument("--waiters", type=int, default=10_000, help="part 2: held getmsg requests")
    parser.add_argument("--replies", type=int, default=5_000, help="part 2: replies per phase")
    parser.add_argument("--rate", type=float, default=500, help="part 2: replies per second")
    parser.add_argument("--rounds", type=int, default=3, help="part 2: rounds of (without, with), order alternating")
    parser.add_argument("--chat-uploaders", type=int, default=4, help="part 2: concurrent uploaders")
    parser.add_argument("--chat-photo-mb", type=float, default=5.0, help="part 2's photo size")
    parser.add_argument("--upload-lead-seconds", type=float, default=2.0,
                        help="part 2: how long the uploads run before the replies start")
    parser.add_argument("--settle-seconds", type=float, default=3.0,
                        help="part 2: pause after holding the getmsg requests, and after letting them go")
    parser.add_argument("--send-connections", type=int, default=32)
    parser.add_argument("--connect-batch", type=int, default=500)
    parser.add_argument("--streams", type=int, default=20, help="part 3: uploads streaming at once")
    parser.add_argument("--stream-mb", type=float, default=50.0, help="part 3: size of each")
    parser.add_argument("--pace-mb", type=float, default=1.0, help="part 3: each client sends this much ...")
    parser.add_argument("--pace-ms", type=float, default=50.0, help="... every this many ms")
    parser.add_argument("--part-timeout", type=float, default=900, help="seconds any one part may take")
    parser.add_argument("--chat-file", help="part 2: what the uploaders send instead of the photo (a file the "
                                             "server refuses after streaming it separates streaming from decoding)")
    parser.add_argument("--uploader-nice", type=int, default=0,
                        help="part 2: niceness of the uploaders' process (10: as if the uploading phones were "
                             "not on the server's 2 cores; the chat's load generator keeps 0)")
    parser.add_argument("--media-directory", help="where the servers keep uploads (default: in each server's temp dir, on the database's disk); "
                        "/dev/shm takes the disk's fsyncs out of the comparison")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    add_backend_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    unknown = set(args.parts.split(",")) - {"throughput", "chat", "rss"}
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    if set(args.stores.split(",")) - {"local", "s3"}:
        parser.error("--stores: local and/or s3")
    if args.stream_mb * MB > 50 * 1024 * 1024:
        print("note: --stream-mb above the server's max_video_bytes (50 MiB): the uploads get 413", file=sys.stderr)
    results = asyncio.run(run(args))
    report(results)
    print(json.dumps({"bench": "uploads", **results}))


if __name__ == "__main__":
    main()
