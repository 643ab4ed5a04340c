#!/usr/bin/env python3
"""The example servers, built for Windows, run under Wine and driven from Linux.

For each backend given (default: iocp and poll) every example server is started under
`wine` on 127.0.0.1 port 0; its one `listening on IP:PORT (backend: X)` line is checked,
then protocol checks run from Linux (Python sockets and the Linux `ringport-load`,
which verifies every reply byte for byte), then the server is stopped with SIGINT, which
Wine turns into a console Ctrl-C event: the server must drain and exit 0.

Usage: check_servers.py --exe-dir DIR --load PATH [--backend iocp --backend poll]
Prints one line per check and a final `N passed, N failed` line; exits 1 on any failure.
Every socket operation has a timeout; the whole run is bounded.
"""

import argparse
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

START_TIMEOUT = 60.0  # the first Wine start in a fresh prefix is slow
IO_TIMEOUT = 20.0

passed = 0
failed = 0


def report(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name} {detail}".rstrip(), flush=True)
    else:
        failed += 1
        print(f"FAIL {name} {detail}".rstrip(), flush=True)


class Server:
    """One example server under wine; `addr` once it printed its listening line."""

    def __init__(self, exe, backend, extra=()):
        env = dict(os.environ, WINEDEBUG="-all", RUST_LOG="warn")
        self.proc = subprocess.Popen(
            ["wine", exe, "--backend", backend, "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.stderr = []
        self.drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self.drain.start()
        self.line = self._read_line(START_TIMEOUT)
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+) \(backend: (\w+)\)", self.line or "")
        self.port = int(m.group(1)) if m else None
        self.backend = m.group(2) if m else None

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def _read_line(self, timeout):
        result = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return result[0].decode(errors="replace").strip() if result else None

    def stop(self):
        """SIGINT (Wine turns it into a console Ctrl-C event); the exit code, None on timeout."""
        if self.proc.poll() is None:
            # `wine` execs into the Windows process: this pid is the server itself.
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def wine_lost(self):
        """True when the process never started because Wine's own server went away."""
        self.kill()
        self.drain.join(5)
        return any("wine client error" in line for line in self.stderr)


def restart_wineserver():
    # Not captured: the persistent wineserver keeps any inherited pipe open.
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    subprocess.run(["wineserver", "-k"], **quiet)
    subprocess.run(["wineserver", "-p", "600"], **quiet)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    s.settimeout(IO_TIMEOUT)
    return s


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            break
        buf.extend(b)
    return bytes(buf)


def recv_until_eof(s):
    buf = bytearray()
    while True:
        b = s.recv(65536)
        if not b:
            return bytes(buf)
        buf.extend(b)


def recv_line(s, f):
    return f.readline().decode(errors="replace").rstrip("\r\n")


def echo_half_close(port):
    data = os.urandom(4 << 20)
    s = connect(port)
    got = []
    t = threading.Thread(target=lambda: got.append(recv_until_eof(s)))
    t.start()
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    t.join(IO_TIMEOUT * 2)
    s.close()
    return bool(got) and got[0] == data, f"{len(got[0]) if got else 0} of {len(data)} bytes, then EOF"


def echo_many(port, n=500):
    socks = [connect(port) for _ in range(n)]
    for i, s in enumerate(socks):
        s.sendall(b"hello %d\n" % i)
    ok = all(recv_exact(s, len(b"hello %d\n" % i)) == b"hello %d\n" % i for i, s in enumerate(socks))
    for s in socks:
        s.close()
    return ok, f"{n} connections open at once"


def packet_roundtrip(port):
    s = connect(port)
    frames = [os.urandom(n) for n in (0, 1, 5, 1000, 60000)]
    wire = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    s.sendall(wire)
    got = recv_exact(s, len(wire))
    s.close()
    return got == wire, f"{len(frames)} frames"


def packet_oversized(port):
    s = connect(port)
    s.sendall(struct.pack(">I", 1 << 30))
    try:
        rest = recv_until_eof(s)
        ok = rest == b""
    except ConnectionResetError:
        ok = True
    s.close()
    return ok, "closed without a reply"


def line_protocol(port):
    s = connect(port)
    f = s.makefile("rb")
    got = [recv_line(s, f)]
    s.sendall(b"PING\r\nECHO hi there\r\nnope\r\nQUIT\r\n")
    got += [recv_line(s, f) for _ in range(4)]
    eof = f.read() == b""
    s.close()
    want = ["+OK ready", "+PONG", "+hi there", "-ERR unknown command", "+BYE"]
    return got == want and eof, repr(got)


def line_too_long(port):
    s = connect(port)
    f = s.makefile("rb")
    recv_line(s, f)
    s.sendall(b"ECHO " + b"x" * 20000 + b"\r\n")
    reply = recv_line(s, f)
    s.close()
    return reply == "-ERR line too long", repr(reply)


def line_pooled_sleep(port):
    """Six SLEEPs on the pool do not delay a PING on another connection."""
    sleepers = [connect(port) for _ in range(6)]
    files = [s.makefile("rb") for s in sleepers]
    for s, f in zip(sleepers, files):
        recv_line(s, f)
        s.sendall(b"SLEEP 1500\r\n")
    t = time.monotonic()
    p = connect(port)
    pf = p.makefile("rb")
    recv_line(p, pf)
    p.sendall(b"PING\r\n")
    pong = recv_line(p, pf)
    dt = time.monotonic() - t
    slept = [recv_line(s, f) for s, f in zip(sleepers, files)]
    for s in sleepers + [p]:
        s.close()
    return pong == "+PONG" and dt < 1.2 and slept == ["+SLEPT 1500"] * 6, f"PING answered in {dt:.2f} s"


def load(load_bin, mode, port, *args):
    cmd = [load_bin, mode, "--target", f"127.0.0.1:{port}", "--json", "--timeout", "60", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    try:
        j = json.loads(r.stdout)
        detail = f"{j.get('messages')} messages, {j.get('errors')} errors, {j.get('messages_per_sec', 0):.0f} msg/s"
    except ValueError:
        detail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        detail = detail[0]
    return r.returncode == 0, detail


def run_server(exe, backend, extra, checks):
    """Start one example, run its checks, stop it: the results and the (stopped) server."""
    srv = Server(exe, backend, extra)
    results = [("listening line", srv.backend == backend, repr(srv.line))]
    try:
        if srv.port is None:
            return results, srv
        for check_name, check in checks:
            try:
                ok, detail = check(srv.port)
            except Exception as e:  # noqa: BLE001 -- any failure is a failed check
                ok, detail = False, f"{type(e).__name__}: {e}"
            results.append((check_name, ok, detail))
        code = srv.stop()
        results.append(("Ctrl-C drains and exits 0", code == 0, f"exit {code}"))
    finally:
        srv.kill()
    return results, srv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe-dir", required=True, help="target/x86_64-pc-windows-gnu/<profile>/examples")
    ap.add_argument("--load", required=True, help="the Linux ringport-load binary")
    ap.add_argument("--backend", action="append", help="iocp, poll (default: both)")
    a = ap.parse_args()
    backends = a.backend or ["iocp", "poll"]

    def exe(name):
        return os.path.join(a.exe_dir, name + ".exe")

    plan = {
        "echo_server": ([], [
            ("4 MiB echoed, then half-close", echo_half_close),
            ("many connections", echo_many),
            ("ringport-load echo", lambda p: load(a.load, "echo", p, "-c", "100", "-l", "512", "-n", "200", "--pipeline", "4")),
        ]),
        "packet_echo_server": ([], [
            ("frames echoed", packet_roundtrip),
            ("oversized frame closes", packet_oversized),
            ("ringport-load packet", lambda p: load(a.load, "packet", p, "-c", "50", "-l", "1000", "-n", "200", "--pipeline", "4")),
        ]),
        "line_server": ([], [
            ("protocol", line_protocol),
            ("line too long", line_too_long),
            ("ringport-load line", lambda p: load(a.load, "line", p, "-c", "50", "-l", "32", "-n", "200")),
        ]),
        "line_server_pooled": (["--workers", "8"], [
            ("protocol", line_protocol),
            ("blocking work stays on the pool", line_pooled_sleep),
        ]),
        "large_packet_echo_server": ([], [
            ("frames echoed", packet_roundtrip),
            ("ringport-load packet 20 KB", lambda p: load(a.load, "packet", p, "-c", "20", "-l", "20000", "-n", "50", "--pipeline", "2")),
        ]),
    }
    t0 = time.monotonic()
    for backend in backends:
        for name, (extra, checks) in plan.items():
            label = f"{backend}/{name}"
            if not os.path.isfile(exe(name)):
                report(label, False, f"missing {exe(name)}")
                continue
            results, srv = run_server(exe(name), backend, extra, checks)
            # Wine's own server can die under the checks ("wine client error: ... recvmsg:
            # Connection reset by peer": the executable never starts, or its sockets go). That
            # is Wine's failure, not the example's: as in .ci/windows.sh, it is said, Wine is
            # restarted and the example's checks run once more. An example that fails on its
            # own still fails.
            if any(not ok for _, ok, _ in results) and srv.wine_lost():
                print(f"{label}: Wine's server was lost ({sum(not ok for _, ok, _ in results)} check(s) failed with it); restarting Wine and running this example's checks once more", flush=True)
                restart_wineserver()
                results, srv = run_server(exe(name), backend, extra, checks)
            for check_name, ok, detail in results:
                report(f"{label} {check_name}", ok, detail)
            if any(not ok for _, ok, _ in results):
                print("".join(srv.stderr[-20:]), file=sys.stderr)
    print(f"wine server checks took {time.monotonic() - t0:.1f} s")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
