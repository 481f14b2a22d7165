#!/usr/bin/env python3
"""Webhook delivery beside the chat: longpoll.py without and with a slow receiver, side by side.

Every run holds 10,000 getmsg requests, has 2,000 customers send a message
nobody reads just before the replies, then measure 5,000 replies at 1,000/s.
The second and third runs have webhooks on (``unread_after_seconds = 1``):
during the replies the 2,000 stretches come due, are promoted from the outbox
to events, and are POSTed, to a receiver that answers at once, then to one
that answers each after 3 s (16 attempts held open at a time per process).
The second run against the first is what watching and promoting cost (a watch
upserted with every send, due watches looked at on the shared writer); the
third against the second is what a slow receiver costs, which must be nothing.

    python bench/webhooks.py                     # SQLite
    python bench/webhooks.py --backend postgresql
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("rate_achieved", "send_failures", "delivered", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
          "latency_ms_max", "server_cpu_percent_during_replies", "server_rss_mb_after",
          "webhooks_received_during_replies")


def longpoll(*args: str) -> dict:
    output = subprocess.run([sys.executable, str(HERE / "longpoll.py"), *args], capture_output=True, text=True,
                            check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--unread-sends", default="2000")
    parser.add_argument("--delay", default="3", help="seconds the slow receiver takes to answer each event")
    parser.add_argument("--rate", default="1000", help="replies per second")
    args = parser.parse_args()
    common = ["--backend", args.backend, "--unread-sends", args.unread_sends, "--rate", args.rate]
    runs = {"webhooks off": longpoll(*common),
            "on, receiver answers at once": longpoll(*common, "--webhook-delay", "0"),
            f"on, receiver answers after {args.delay} s": longpoll(*common, "--webhook-delay", args.delay)}
    width = max(map(len, FIELDS))
    print(f"{'':{width}}  " + "  ".join(f"{name:>32}" for name in runs))
    for field in FIELDS:
        print(f"{field:{width}}  " + "  ".join(f"{str(run.get(field)):>32}" for run in runs.values()))
    print(json.dumps({"bench": "webhooks", **runs}))


if __name__ == "__main__":
    main()
