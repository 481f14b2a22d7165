#!/usr/bin/env python3
"""The hot path's stages, from py-spy samples of the server during longpoll.py's replies.

``longpoll.py --profile FILE`` records the server with py-spy (``--format raw``)
for exactly the reply phase; this script sorts each sample of the event loop's
thread into the stage of its innermost recognised frame and prints each
stage's share, and, given that thread's CPU per delivered message in ms, its
microseconds per message:

    python bench/stages.py /tmp/replies.txt 0.9

Only the loop thread's samples are shared out: py-spy counts aiosqlite's
thread as busy while it waits for work or for an fsync, so its samples are not
CPU. Its CPU (from /proc, ``longpoll.py`` prints it) is a row of its own.
"""
from __future__ import annotations

import collections
import sys

#: the stages of one delivered message; a sample belongs to the first stage, from the innermost frame
#: out, with one of these names in a frame
STAGES = [
    ("read position write", ("mark_delivered", "_queue_read_positions", "_move_read_positions", "_marks_settled")),
    ("render item", ("render", "customer_item", "radar_item", "message_item")),
    ("wake waiter", ("_wake_waiters", "Waiters.notify", "Waiters.hand", "Waiters.claim", "hand_off", "_as_message")),
    ("commit (writer, SQLite thread)", ("Writer.", "_commit", "SQLiteDatabase.transact", "_apply_changes", "_insert_messages", "_connection_worker_thread")),
    ("signature + account", ("verify_signature", "SignedHandler.prepare", "ChatStore.customer", "ChatStore.radar_user", "_account")),
    ("send: parse, validate, answer", ("parse_content", "Params.", "read_send", "SendMessageHandler", "SendHandler")),
    ("getmsg answer write", ("GetMsgHandler", "LongPollHandler", "answer_getmsg")),
    ("HTTP: parse request, route, handler setup", ("_read_message", "headers_received", "HTTPServerRequest", "find_handler", "RequestHandler.__init__", "_server_request_loop")),
    ("event loop / IO", ("_run_once", "_handle_events", "Runner.run", "run_forever")),
]


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for stage, names in STAGES:
            if any(name in frame for name in names):
                return stage
    return "other"


def classify(path: str) -> tuple[collections.Counter, int]:
    """Stage -> samples, over the event loop thread's samples only (threads start at ``Thread._bootstrap``)."""
    counts: collections.Counter = collections.Counter()
    total = 0
    with open(path) as samples:
        for line in samples:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit() or stack.startswith("Thread._bootstrap"):
                continue
            total += int(count)
            counts[stage_of(stack.split(";"))] += int(count)
    return counts, total


def report(path: str, loop_ms_per_message: float | None = None,
           thread_ms_per_message: float | None = None) -> list[str]:
    counts, total = classify(path)
    lines = []
    for stage, n in counts.most_common():
        share = n / total
        extra = f"  {share * loop_ms_per_message * 1000:6.0f} µs/message" if loop_ms_per_message else ""
        lines.append(f"{100 * share:5.1f}%  {stage}{extra}")
    if thread_ms_per_message is not None:
        lines.append(f"        other threads (COMMIT and fsync on aiosqlite's thread)  "
                     f"{thread_ms_per_message * 1000:6.0f} µs/message")
    lines.append(f"loop thread samples {total}")
    return lines


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        sys.exit(__doc__)
    try:
        arguments = [float(value) for value in sys.argv[2:4]]
        print("\n".join(report(sys.argv[1], *arguments)))
    except (OSError, ValueError) as error:
        sys.exit(f"stages.py: {error}")
