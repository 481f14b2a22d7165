#!/usr/bin/env python3
"""Request rate of send_msg and getmsg?wait=0 next to a bare Tornado handler.

All three are driven by wrk (32 connections, 2 threads) in the same run on the
same machine. send_msg is the real thing: signed, validated, and durable in
the database before its 200 (``--backend postgresql --processes N``: on a
throwaway PostgreSQL cluster, served by N workers; the server's CPU is all
workers', PostgreSQL's and wrk's are given beside it). Every answer's envelope is checked; any code other than
200 counts as an error. Prints each rate, the ratios, and one JSON line.

    python bench/throughput.py                      # 10 s per target
    python bench/throughput.py --seconds 30 --connections 64

Needs wrk (Debian: apt-get install wrk).
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ChatServer,
    add_backend_arguments,
    cpu_percent,
    free_port,
    postgres_cpu_seconds,
    print_table,
    sample_all,
    signed_path,
    wait_for_port,
)

HERE = Path(__file__).resolve().parent
CUSTOMER_SEND = "/zhugeleida/gongzhonghao/chat/send_msg/0"
CUSTOMER_GETMSG = "/zhugeleida/gongzhonghao/chat/getmsg/0"

LUA = r"""
local specs = {%s}
local requests = {}
local counter = 0
errors = 0  -- global: done() reads it from each thread
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  -- formatted here, once wrk has set the Host header
  for i, spec in ipairs(specs) do
    requests[i] = wrk.format(spec[1], spec[2], spec[3], spec[4])
  end
  counter = math.random(#requests)
end

function request()
  counter = counter %% #requests + 1
  return requests[counter]
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"code":200', 1, true) then
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("errors") or 0)
  end
  io.write(string.format("envelope_errors %%d\n", total))
end
"""


def lua_script(requests: list[tuple[str, str, str]]) -> str:
    """requests: (method, path, body)"""
    entries = []
    for method, path, body in requests:
        headers = '{["Content-Type"]="application/x-www-form-urlencoded"}' if method == "POST" else "{}"
        entries.append(f'{{"{method}", "{path}", {headers}, "{body}"}}')
    return LUA % ",\n".join(entries)


def run_wrk(port: int, script: str, seconds: float, connections: int, threads: int, pids: list[int]) -> dict:
    """One wrk run; ``pids`` are the server's, whose CPU per answered request is reported."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    server_before = sample_all(pids)
    postgres_before, children_before = postgres_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", file.name,
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    server_after = sample_all(pids)
    postgres_busy = postgres_cpu_seconds() - postgres_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, the one child reaped meanwhile
    wrk_busy = (children_after.ru_utime - children_before.ru_utime) + (children_after.ru_stime - children_before.ru_stime)
    if "Requests/sec" not in output:
        raise RuntimeError(f"wrk failed:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    answered = int(re.search(r"(\d+) requests in", output).group(1))
    errors = int(re.search(r"envelope_errors (\d+)", output).group(1))
    socket_errors = re.search(r"Socket errors: (.*)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    p50 = re.search(r"50%\s+([\d.]+\w+)", output).group(1)
    p99 = re.search(r"99%\s+([\d.]+\w+)", output).group(1)
    return {"rate": rate, "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
            "socket_errors": socket_errors.group(1) if socket_errors else "none", "p50": p50, "p99": p99,
            "server_cpu_us_per_request": round(
                1e6 * (server_after.cpu_seconds - server_before.cpu_seconds) / max(answered, 1), 1),
            "server_cpu_percent": round(cpu_percent(server_before, server_after), 1),
            "wrk_cpu_percent": round(100 * wrk_busy / seconds, 1),
            "postgres_cpu_percent": round(100 * postgres_busy / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--customers", type=int, default=1000, help="distinct signed senders in the rotation")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs both servers")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None,
                        help="event loop of both servers (default: uvloop if the interpreter has it)")
    parser.add_argument("--skip-bare", action="store_true", help="measure leida-chat only (the bare handler is not rerun)")
    add_backend_arguments(parser)
    args = parser.parse_args()
    if args.loop is None:
        has_uvloop = subprocess.run([args.python, "-c", "import uvloop"], capture_output=True).returncode == 0
        args.loop = "uvloop" if has_uvloop else "asyncio"
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")

    results: dict[str, dict] = {}
    bare_port = free_port()
    bare = None if args.skip_bare else subprocess.Popen(
        [args.python, str(HERE / "bare_tornado.py"), str(bare_port), args.loop])
    try:
        if bare is not None:
            wait_for_port(bare_port, bare)
            results["bare_get"] = run_wrk(bare_port, lua_script([("GET", "/bare", "")]), args.seconds,
                                          args.connections, args.threads, [bare.pid])
            results["bare_post"] = run_wrk(bare_port, lua_script([("POST", "/bare", "u_id=1&content=x")]),
                                           args.seconds, args.connections, args.threads, [bare.pid])
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait()

    server = ChatServer(users=1, customers=args.customers, python=args.python,
                        env={"LEIDA_SERVER_EVENT_LOOP": args.loop}, backend=args.backend, processes=args.processes)
    (user_id, _), = server.users.items()
    content = "%7B%22info_type%22%3A1%2C%22msg%22%3A%22throughput%20bench%20%F0%9F%98%80%22%7D"
    sends = [("POST", signed_path(CUSTOMER_SEND, cid, token), f"u_id={user_id}&content={content}")
             for cid, token in server.customers.items()]
    polls = [("GET", signed_path(CUSTOMER_GETMSG, cid, token, u_id=user_id, wait=0), "")
             for cid, token in server.customers.items()]
    with server:
        pids = server.worker_pids
        results["send_msg"] = run_wrk(server.port, lua_script(sends), args.seconds, args.connections, args.threads,
                                      pids)
        results["send_msg"]["server_rss_mb_per_process"] = round(sample_all(pids).rss_mb / len(pids), 1)
        results["getmsg_wait0"] = run_wrk(server.port, lua_script(polls), args.seconds, args.connections,
                                          args.threads, pids)
    ratios = {} if bare is None else {
        "send_msg_vs_bare_post": round(results["send_msg"]["rate"] / results["bare_post"]["rate"], 3),
        "getmsg_vs_bare_get": round(results["getmsg_wait0"]["rate"] / results["bare_get"]["rate"], 3),
        # the same comparison by cost rather than rate: the bare handler's CPU per request over ours
        "send_msg_cpu_vs_bare_post": round(
            results["bare_post"]["server_cpu_us_per_request"] / results["send_msg"]["server_cpu_us_per_request"], 3),
    }
    rows: list[tuple[str, object]] = []
    for name, result in results.items():
        rows += [(f"{name} req/s", result["rate"]), (f"{name} errors", result["errors"]),
                 (f"{name} latency p50/p99", f"{result['p50']} / {result['p99']}"),
                 (f"{name} server CPU µs/request", result["server_cpu_us_per_request"])]
    rows += list(ratios.items())
    print_table(f"throughput: wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s, {args.loop} loop", rows)
    print(json.dumps({"bench": "throughput", "backend": args.backend, "processes": args.processes, "loop": args.loop,
                      "connections": args.connections, "seconds": args.seconds, **results, **ratios}))


if __name__ == "__main__":
    main()
