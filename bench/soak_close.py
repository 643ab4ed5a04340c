#!/usr/bin/env python3
"""Close-path byte-accounting soak for echo_server and packet_echo_server (not in CI).

    cargo build --release --examples
    bench/soak_close.py                              # 600 s, uring and epoll, both servers
    bench/soak_close.py --duration 60 --backends epoll --clients 16

For each (backend, server) pair it starts the server on 127.0.0.1:0 and runs --clients
concurrent client loops for --duration seconds, all pairs at the same time. Each loop opens a
connection after another. A connection sends a random number of messages of mixed sizes
(mostly under 200 bytes, some up to 64 KiB, a few up to 1 MiB; whole length-prefixed frames
for packet_echo_server), with reading paused now and then, and ends in one of three ways:

- half-close (55%): shutdown(SHUT_WR) after the last message; every byte sent must come back,
  then EOF;
- reset (25%): SO_LINGER 0 and close at a random point; what came back must be a prefix;
- close (20%): wait for the full echo, then close.

Every byte read is compared with what was sent on that connection. A mismatch is a differing
byte, an EOF before everything came back after a half-close, or a reset / EOF the client did
not ask for. At the end each server is stopped with SIGTERM; its `stopped ... stats=` line
gives the close counts, and it must exit 0 with no `flush-stalled`, `drain-timeout` or
`handler-panic` close.

Output: a markdown summary on stdout (progress on stderr); --json FILE also writes the figures.
Exit status 0 when every pair had zero mismatches and errors and a clean stop, 1 otherwise,
2 on a setup error.
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_CLOSES = ("flush-stalled", "drain-timeout", "handler-panic")


def log(msg):
    print(f"[soak_close] {msg}", file=sys.stderr, flush=True)


class Pair:
    """One server (backend, example) and its figures."""

    def __init__(self, backend, server):
        self.backend = backend
        self.server = server
        self.proc = None
        self.addr = None
        self.log_path = None
        self.connections = 0
        self.half_closes = 0
        self.resets = 0
        self.closes = 0
        self.bytes_sent = 0
        self.bytes_verified = 0
        self.half_close_bytes = 0
        self.mismatches = 0
        self.errors = 0
        self.examples = []
        self.exit_code = None
        self.closed = {}
        self.stats_line = ""

    def name(self):
        return f"{self.server}/{self.backend}"

    def problem(self, kind, what):
        if kind == "mismatch":
            self.mismatches += 1
        else:
            self.errors += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {what}")
            log(f"{self.name()}: {kind}: {what}")


def start_server(pair, bin_dir, workdir):
    exe = os.path.join(bin_dir, pair.server)
    if not os.access(exe, os.X_OK):
        print(f"error: {exe} not found: run `cargo build --release --examples`", file=sys.stderr)
        sys.exit(2)
    pair.log_path = os.path.join(workdir, f"{pair.server}-{pair.backend}.log")
    env = dict(os.environ, RUST_LOG="info")
    env.pop("RINGPORT_BACKEND", None)
    pair.proc = subprocess.Popen(
        [exe, "--listen", "127.0.0.1:0", "--backend", pair.backend],
        stdout=subprocess.PIPE,
        stderr=open(pair.log_path, "w"),
        env=env,
    )
    line = pair.proc.stdout.readline().decode()
    m = re.match(r"listening on ([\d.]+):(\d+) \(backend: (\w+)\)", line)
    if not m or m.group(3) != pair.backend:
        pair.proc.kill()
        print(f"error: {pair.name()} did not start: {line!r}; see {pair.log_path}", file=sys.stderr)
        sys.exit(2)
    pair.addr = (m.group(1), int(m.group(2)))


def stop_server(pair, timeout=30):
    pair.proc.send_signal(signal.SIGTERM)
    try:
        pair.exit_code = pair.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pair.proc.kill()
        pair.exit_code = "killed (no exit within 30 s of SIGTERM)"
        return
    with open(pair.log_path) as f:
        for line in f:
            if "stopped" in line and "stats=" in line:
                pair.stats_line = line.strip()
                closed = line.split("closed: {", 1)[1].split("}", 1)[0]
                for kv in closed.split(","):
                    k, v = kv.split(":")
                    pair.closed[k.strip().strip('"')] = int(v)


def mixed_size(rng):
    r = rng.random()
    if r < 0.6:
        return rng.randint(1, 200)
    if r < 0.97:
        return rng.randint(200, 64 * 1024)
    return rng.randint(64 * 1024, 1 << 20)


def message(rng, packet):
    n = mixed_size(rng)
    payload = rng.randbytes(n)
    return struct.pack(">I", n) + payload if packet else payload


async def connection(pair, rng, packet):
    reader, writer = await asyncio.open_connection(*pair.addr)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pair.connections += 1
    deadline = time.monotonic() + 120
    sent = bytearray()  # appended before each write: the echo can never run ahead of it
    got = bytearray()
    ending = rng.choices(["half-close", "reset", "close"], [55, 25, 20])[0]
    count = rng.randint(1, 40)
    reset_at = rng.randint(0, count)
    pause_prob = rng.choice([0.0, 0.0, 0.05, 0.3])
    state = {"writing_done": False}

    async def read_echo():
        """Reads and checks every byte; returns how reading ended."""
        while True:
            if pause_prob and rng.random() < pause_prob:
                await asyncio.sleep(rng.uniform(0.01, 0.3))  # stops reading for a while
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                chunk = await asyncio.wait_for(reader.read(256 * 1024), left)
            except (ConnectionResetError, BrokenPipeError):
                return "reset"
            except asyncio.TimeoutError:
                return "timeout"
            if not chunk:
                return "eof"
            at = len(got)
            got.extend(chunk)
            if sent[at:len(got)] != chunk:
                return f"bytes differ at offset {at}"
            if state["writing_done"] and ending == "close" and len(got) == len(sent):
                return "complete"

    task = asyncio.ensure_future(read_echo())
    try:
        for i in range(count):
            if ending == "reset" and i == reset_at:
                break
            if task.done():
                break  # the reader already ended: reported below
            msg = message(rng, packet)
            sent.extend(msg)
            writer.write(msg)
            await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
    except (ConnectionResetError, BrokenPipeError) as e:
        if not task.done():
            task.cancel()
        pair.problem("mismatch", f"reset while writing: {e}")
        writer.transport.abort()
        return
    except asyncio.TimeoutError:
        task.cancel()
        pair.problem("error", "write timed out (the server stopped reading)")
        writer.transport.abort()
        return
    pair.bytes_sent += len(sent)
    state["writing_done"] = True
    if ending == "reset":
        if task.done() and task.result() != "timeout":
            pair.problem("mismatch", f"reading ended before the client's reset: {task.result()}")
        task.cancel()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        pair.bytes_verified += len(got)
        pair.resets += 1
        return
    if ending == "close" and len(got) == len(sent) and not task.done():
        task.cancel()
        how = "complete"
    else:
        if ending == "half-close":
            writer.write_eof()
        how = await task
    want = "eof" if ending == "half-close" else "complete"
    if how != want or len(got) != len(sent):
        kind = "error" if how == "timeout" else "mismatch"
        pair.problem(kind, f"{ending}: reading ended with {how} after {len(got)} of {len(sent)} bytes")
    elif ending == "half-close":
        pair.half_closes += 1
        pair.half_close_bytes += len(sent)
    else:
        pair.closes += 1
    pair.bytes_verified += len(got)
    writer.transport.abort() if how != want else writer.close()


async def client_loop(pair, seed, end):
    rng = random.Random(seed)
    packet = pair.server == "packet_echo_server"
    while time.monotonic() < end:
        try:
            await connection(pair, rng, packet)
        except OSError as e:
            pair.problem("error", f"connect or IO error: {e}")
            await asyncio.sleep(0.1)


async def progress(pairs, end):
    while time.monotonic() < end:
        await asyncio.sleep(min(30, max(0.1, end - time.monotonic())))
        for p in pairs:
            log(
                f"{p.name()}: {p.connections} connections, {p.bytes_verified / 1e6:.1f} MB verified, "
                f"{p.mismatches} mismatches, {p.errors} errors"
            )


async def soak(pairs, args, seed):
    end = time.monotonic() + args.duration
    tasks = [asyncio.ensure_future(progress(pairs, end))]
    for i, p in enumerate(pairs):
        for c in range(args.clients):
            tasks.append(asyncio.ensure_future(client_loop(p, seed * 1000 + i * 100 + c, end)))
    await asyncio.gather(*tasks)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    ap.add_argument("--backends", default="uring,epoll")
    ap.add_argument("--servers", default="echo_server,packet_echo_server")
    ap.add_argument("--clients", type=int, default=24, help="concurrent clients per server")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release", "examples"))
    ap.add_argument("--seed", type=int, default=None, help="default: fresh, printed")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    workdir = tempfile.mkdtemp(prefix="ringport-soak-close.")
    pairs = [Pair(b, s) for b in args.backends.split(",") for s in args.servers.split(",")]
    for p in pairs:
        start_server(p, args.bin_dir, workdir)
    log(f"seed {seed}; {len(pairs)} servers x {args.clients} clients for {args.duration:.0f} s; logs in {workdir}")
    started = time.time()
    try:
        asyncio.run(soak(pairs, args, seed))
    finally:
        for p in pairs:
            stop_server(p)
    elapsed = time.time() - started
    ok = True
    print(f"### Close-path soak: {elapsed:.0f} s, seed {seed}\n")
    print(f"`bench/soak_close.py --duration {args.duration:.0f} --backends {args.backends} "
          f"--servers {args.servers} --clients {args.clients} --seed {seed}`\n")
    print("| server | backend | connections | half-closed | reset | closed | MB sent | MB verified | "
          "MB after half-close | mismatches | errors | server closes | exit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for p in pairs:
        closes = ", ".join(f"{k} {v}" for k, v in sorted(p.closed.items()) if v)
        bad = sum(p.closed.get(k, 0) for k in BAD_CLOSES)
        good = p.mismatches == 0 and p.errors == 0 and p.exit_code == 0 and bad == 0 and p.closed
        ok = ok and bool(good)
        print(f"| {p.server} | {p.backend} | {p.connections} | {p.half_closes} | {p.resets} | "
              f"{p.closes} | {p.bytes_sent / 1e6:.1f} | {p.bytes_verified / 1e6:.1f} | "
              f"{p.half_close_bytes / 1e6:.1f} | {p.mismatches} | {p.errors} | {closes} | "
              f"{p.exit_code} |")
    for p in pairs:
        for e in p.examples:
            print(f"\n- {p.name()}: {e}")
    print(f"\nverdict: {'PASS' if ok else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "seed": seed,
                    "elapsed_s": elapsed,
                    "pass": ok,
                    "pairs": [
                        {k: v for k, v in vars(p).items() if k not in ("proc",)} for p in pairs
                    ],
                },
                f,
                indent=1,
                default=str,
            )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
