#!/usr/bin/env python3
"""PING latency while handlers block: line_server vs line_server_pooled.

Usage:
    bench/isolation.py                       # both servers, backends uring and epoll
    bench/isolation.py --backends epoll --pings 10
    bench/isolation.py --bin-dir target/release/examples --sleepers 6 --sleep-ms 1500

Needs the release examples built (`cargo build --release --examples --bins`); Python 3
standard library only. For each server (line_server: SLEEP blocks the IO thread it runs on;
line_server_pooled --workers 8: every command runs on a worker) and backend, started with
`--listen 127.0.0.1:0 --backend B --io-threads 2`:

1. baseline: PINGS fresh connections one after another, each: connect, read the
   `+OK ready` greeting, send `PING`, read `+PONG`; one is started every GAP_MS (default
   50 ms) whether or not the previous one was answered (open loop, a thread each);
2. SLEEPERS connections are opened and greeted, then each sends `SLEEP SLEEP_MS` at once;
   after ~100 ms, PINGS fresh connections as in 1 (20 x 50 ms: all start within the first
   1.1 s, while every sleep still runs). A closed loop would let one stalled PING hold back
   the rest until the sleeps are over, and measure them on an idle server.
   The `+SLEPT` replies are read (and timed) by a thread per sleeper.

Latency is measured from connect() to `+PONG` (a stalled IO thread delays the accept and
greeting, not just the PING), and also from sending PING to `+PONG`. The kernel spreads
connections over the IO threads by hash (SO_REUSEPORT), so with line_server which PINGs
stall, and for how long (a thread with k sleepers is blocked k x SLEEP_MS), varies by run;
the `+SLEPT` times show how the sleepers were spread.

Bounded: every socket has a 5 s timeout; the whole run stops starting new cases after
--budget seconds (default 55). Markdown goes to stdout, progress to stderr. Every server
started is stopped (SIGTERM, then SIGKILL after 5 s) on exit, including on errors.
A PING that gets no reply within the 5 s socket timeout is shown as ">5000 (timeout)".
Exit status: 0 unless a PING failed (wrong reply, reset), timed out anywhere but on
line_server under SLEEP (where a stall is the expected behaviour), a SLEEP failed, or a
server failed to start or to exit 0 on SIGTERM; then 1.
"""

import argparse
import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SOCK_TIMEOUT = 5.0
SERVERS = {
    "line_server": [],
    "line_server_pooled": ["--workers", "8"],
}

_procs = []


def log(msg):
    print(f"[isolation] {msg}", file=sys.stderr, flush=True)


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))


def start_server(binary, backend, extra):
    cmd = [binary, "--listen", "127.0.0.1:0", "--backend", backend, "--io-threads", "2", *extra]
    err = tempfile.NamedTemporaryFile(prefix="isolation-", suffix=".err", delete=False)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    _procs.append(p)
    p.err_file = err
    # One stdout line: "listening on 127.0.0.1:PORT (backend: X)"; bounded by a timer.
    timer = threading.Timer(20, p.kill)
    timer.start()
    try:
        line = p.stdout.readline().decode(errors="replace")
    finally:
        timer.cancel()
    m = re.match(r"^listening on .*:(\d+) \(backend: (.*)\)$", line.strip())
    if not m:
        stop_server(p)
        raise RuntimeError(f"{' '.join(cmd)}: no listening line (got {line!r}); stderr: {stderr_tail(p)}")
    return p, int(m.group(1)), m.group(2), cmd


def stderr_tail(p, n=20):
    try:
        p.err_file.flush()
        p.err_file.seek(0)
        lines = p.err_file.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except Exception as e:  # noqa: BLE001
        return f"(stderr unreadable: {e})"


def stop_server(p):
    """SIGTERM; returns the exit status (or a string if it had to be killed)."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return "killed (no exit 10 s after SIGTERM)"
    return p.returncode


def read_until(sock, token):
    buf = b""
    while token not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed by the server after {buf!r}")
        buf += chunk
    return buf


def greeted(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=SOCK_TIMEOUT)
    s.settimeout(SOCK_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    g = read_until(s, b"\r\n")
    if g != b"+OK ready\r\n":
        s.close()
        raise ValueError(f"bad greeting {g!r}")
    return s


def one_ping(port):
    """(connect->PONG ms, PING->PONG ms) or raises."""
    t0 = time.perf_counter()
    s = greeted(port)
    try:
        t1 = time.perf_counter()
        s.sendall(b"PING\r\n")
        r = read_until(s, b"\r\n")
        t2 = time.perf_counter()
        if r != b"+PONG\r\n":
            raise ValueError(f"bad reply {r!r}")
        return (t2 - t0) * 1e3, (t2 - t1) * 1e3
    finally:
        s.close()


def ping_series(port, n, gap_ms):
    """PING n times from fresh connections, the i-th started at i * gap_ms (open loop: each in
    its own thread, so a stalled PING does not delay the next one's start).
    total/ping: latencies in ms (a timed-out PING counts as +inf in `total`);
    errors: failures other than timeouts; timeline: (start s from `base`, total ms or None)."""
    slots = [None] * n
    base = time.perf_counter()

    def one(i):
        delay = base + i * gap_ms / 1e3 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter() - base
        try:
            slots[i] = (start, *one_ping(port), None)
        except TimeoutError:
            slots[i] = (start, float("inf"), None, None)  # stalled for the whole socket timeout
        except Exception as e:  # noqa: BLE001 - resets, bad replies
            slots[i] = (start, None, None, f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(n * gap_ms / 1e3 + 3 * SOCK_TIMEOUT + 1)
    total, ping, errors, timeline = [], [], [], []
    for slot in slots:
        if slot is None:
            errors.append("PING thread did not finish")
            continue
        start, t, pg, err = slot
        timeline.append((start, t))
        if err:
            errors.append(err)
            continue
        total.append(t)
        if pg is not None:
            ping.append(pg)
    return total, ping, errors, base, timeline


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def fmt(x):
    if x != x:  # NaN
        return "-"
    if x == float("inf"):
        return f">{SOCK_TIMEOUT * 1e3:.0f} (timeout)"
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"


def run_case(bin_dir, server, backend, args):
    binary = os.path.join(bin_dir, server)
    res = {"server": server, "backend": backend, "problems": []}
    res["loadavg"] = " ".join(open("/proc/loadavg").read().split()[:3])
    p, port, shown_backend, cmd = start_server(binary, backend, SERVERS[server])
    res["cmd"] = " ".join([os.path.relpath(cmd[0])] + cmd[1:])
    res["shown_backend"] = shown_backend
    sleepers = []
    try:
        log(f"{server} ({backend}, port {port}): baseline")
        b_total, b_ping, b_err, _, _ = ping_series(port, args.pings, args.gap_ms)
        res["base"] = (b_total, b_ping, b_err)

        log(f"{server} ({backend}): {args.sleepers} x SLEEP {args.sleep_ms}, then {args.pings} PINGs")
        for _ in range(args.sleepers):
            sleepers.append(greeted(port))
        slept = [None] * len(sleepers)

        def reader(i, s, t_sent):
            try:
                r = read_until(s, b"\r\n")
                ok = r == f"+SLEPT {args.sleep_ms}\r\n".encode()
                slept[i] = (time.perf_counter() - t_sent) * 1e3 if ok else f"bad reply {r!r}"
            except Exception as e:  # noqa: BLE001
                slept[i] = f"{type(e).__name__}: {e}"

        s_sock_timeout = args.sleep_ms / 1e3 * args.sleepers + SOCK_TIMEOUT
        threads = []
        t_sent = time.perf_counter()
        for s in sleepers:
            s.settimeout(s_sock_timeout)  # a thread may run several sleeps back to back
            s.sendall(f"SLEEP {args.sleep_ms}\r\n".encode())
        for i, s in enumerate(sleepers):
            th = threading.Thread(target=reader, args=(i, s, t_sent), daemon=True)
            th.start()
            threads.append(th)
        time.sleep(0.1)
        l_total, l_ping, l_err, l_base, l_timeline = ping_series(port, args.pings, args.gap_ms)
        res["load"] = (l_total, l_ping, l_err)
        off = l_base - t_sent
        res["timeline"] = [(off + st, v) for st, v in l_timeline]
        res["pings_span_ms"] = ((time.perf_counter() - l_base) * 1e3, (l_base - t_sent) * 1e3)
        for th in threads:
            th.join(s_sock_timeout + 1)
        res["slept"] = slept
        for what, tot, errs in (("baseline", b_total, b_err), ("under SLEEP", l_total, l_err)):
            if errs:
                res["problems"].append(f"{what}: {len(errs)} PING(s) failed: {errs[0]}")
            timeouts = sum(x == float("inf") for x in tot)
            # A stalled PING is line_server's expected behaviour; anywhere else it is a failure.
            if timeouts and (what == "baseline" or server != "line_server"):
                res["problems"].append(f"{what}: {timeouts} PING(s) timed out ({SOCK_TIMEOUT:g} s)")
        bad_sleeps = [x for x in slept if not isinstance(x, float)]
        if bad_sleeps:
            res["problems"].append(f"{len(bad_sleeps)} SLEEP(s) failed: {bad_sleeps[0]}")
    finally:
        for s in sleepers:
            s.close()
        rc = stop_server(p)
        res["exit"] = rc
        if rc != 0:
            res["problems"].append(f"server exit on SIGTERM: {rc}")
        res["stderr"] = stderr_tail(p)
        p.err_file.close()
        os.unlink(p.err_file.name)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--bin-dir", default=os.path.join(root, "target", "release", "examples"))
    ap.add_argument("--backends", default="uring epoll", help='space-separated, default "uring epoll"')
    ap.add_argument("--servers", default="line_server line_server_pooled")
    ap.add_argument("--sleepers", type=int, default=6)
    ap.add_argument("--sleep-ms", type=int, default=1500)
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--gap-ms", type=float, default=50,
                    help="interval between PING starts (default 50: 20 PINGs span 0.95 s)")
    ap.add_argument("--budget", type=float, default=55, help="stop starting cases after this many s")
    args = ap.parse_args()
    os.chdir(root)

    t_start = time.monotonic()
    results, failed = [], False
    for server in args.servers.split():
        for backend in args.backends.split():
            if time.monotonic() - t_start > args.budget:
                log(f"time budget spent: {server} ({backend}) skipped")
                results.append({"server": server, "backend": backend, "skipped": True})
                failed = True
                continue
            try:
                r = run_case(args.bin_dir, server, backend, args)
            except Exception as e:  # noqa: BLE001
                log(f"{server} ({backend}) failed: {e}")
                results.append({"server": server, "backend": backend, "error": str(e)})
                failed = True
                continue
            failed |= bool(r["problems"])
            results.append(r)

    print("## PING latency while handlers block (isolation.py)\n")
    print(f"Command: `bench/isolation.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`; "
          f"{args.sleepers} connections each send `SLEEP {args.sleep_ms}`, then {args.pings} fresh "
          f"connections PING one after another, one started every {args.gap_ms:g} ms whether or not the previous one was answered. Servers run with "
          "`--io-threads 2` (pooled: `--workers 8`). Latency in ms, connect() to `+PONG` "
          "(greeting included); \"PING->PONG\" excludes connect and greeting.\n")
    print("| server | backend | load avg | baseline p50 | baseline max | under SLEEP p50 | "
          "under SLEEP p90 | under SLEEP max | PINGs > 100 ms | PING->PONG p50 / max | "
          "`+SLEPT` after (ms) | timeouts / errors |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in results:
        if r.get("skipped") or r.get("error"):
            why = "skipped (time budget)" if r.get("skipped") else r["error"].replace("|", "\\|")
            print(f"| {r['server']} | {r['backend']} | | | | | | | | | | {why} |")
            continue
        bt, _, be = r["base"]
        lt, lp, le = r["load"]
        slept = sorted(x for x in r["slept"] if isinstance(x, float))
        slept_s = ", ".join(f"{x:.0f}" for x in slept) or "-"
        touts = sum(x == float("inf") for x in bt + lt)
        fails = f"{touts} / {len(be) + len(le)}"
        print(f"| {r['server']} | {r['backend']} | {r['loadavg']} | {fmt(pct(bt, 50))} | "
              f"{fmt(max(bt, default=float('nan')))} | {fmt(pct(lt, 50))} | {fmt(pct(lt, 90))} | "
              f"{fmt(max(lt, default=float('nan')))} | {sum(x > 100 for x in lt)}/{args.pings} | "
              f"{fmt(pct(lp, 50))} / {fmt(max(lp, default=float('nan')))} | {slept_s} | "
              f"{fails} |")
    print()
    for r in results:
        if "cmd" in r:
            span, after = r["pings_span_ms"]
            print(f"- `{r['cmd']}`: PINGs started {after:.0f} ms after the SLEEPs were sent and "
                  f"took {span:.0f} ms in all; exit status on SIGTERM: {r['exit']}")
            tl = ", ".join(f"{st * 1e3:.0f}:{'err' if v is None else fmt(v).split(' ')[0]}"
                           for st, v in r["timeline"])
            print(f"  - PINGs under SLEEP, start ms after the SLEEPs: latency ms: {tl}")
    problems = [(r, p) for r in results if "problems" in r for p in r["problems"]]
    if problems:
        print("\n**Problems:**\n")
        for r, p in problems:
            print(f"- {r['server']} ({r['backend']}): {p}")
        for r in {id(r): r for r, _ in problems}.values():
            print(f"\n{r['server']} ({r['backend']}) stderr tail:\n\n```\n{r['stderr']}\n```")
    print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
