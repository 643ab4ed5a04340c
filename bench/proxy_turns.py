#!/usr/bin/env python3
"""How tcp_proxy spends a message: loop turns, completions, read pauses and the io_uring
loop-turn trace, per variant, on a fixed transfer through tcp_proxy in front of echo_server
(`ringport-load echo -c CONNS -l LEN -n MSGS`: every connection sends MSGS messages).

    bench/proxy_turns.py                                   # default and RINGPORT_URING_WAIT=one
    VARIANTS="default= one=RINGPORT_URING_WAIT=one,RINGPORT_URING_TRACE=1" bench/proxy_turns.py
    BACKEND=epoll VARIANTS="default=" bench/proxy_turns.py

Environment:
  CONNS=10 LEN=65536 MSGS=300 BACKEND=uring ROUNDS=3
  VARIANTS="label=K=V,K=V ..."   tcp_proxy's environment per variant (RINGPORT_URING_TRACE=1 is
                                 always added); `ARG:--flag` passes a flag instead
  BIN_DIR=target/release/examples, LOAD=target/release/ringport-load
  OUT=bench/results/turns-<date>.jsonl   one JSON line per run

Per run: the client's msg/s and p50, and from tcp_proxy's metrics endpoint (scraped after the
transfer) loop turns, completions and backpressure pauses per message, overload actions; from
the trace printed at exit (io_uring only): per-turn completions, wait and busy percentiles.
Rounds interleave the variants; the table gives medians and ranges.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
env = os.environ.get
CONNS, LEN, MSGS = env("CONNS", "10"), env("LEN", "65536"), env("MSGS", "300")
BACKEND, ROUNDS = env("BACKEND", "uring"), int(env("ROUNDS", "3"))
BIN_DIR = env("BIN_DIR", os.path.join(ROOT, "target/release/examples"))
LOAD = env("LOAD", os.path.join(ROOT, "target/release/ringport-load"))
OUT = env("OUT", os.path.join(ROOT, "bench/results",
                              time.strftime("turns-%Y%m%d-%H%M%S.jsonl", time.gmtime())))
VARIANTS = [v.split("=", 1) for v in env("VARIANTS", "default= one=RINGPORT_URING_WAIT=one").split()]


def start(path, args, extra_env, stderr=subprocess.DEVNULL):
    p = subprocess.Popen([path, "--listen", "127.0.0.1:0", "--backend", BACKEND, *args],
                         stdout=subprocess.PIPE, stderr=stderr, text=True,
                         env=dict(os.environ, **extra_env))
    found = {}
    for line in p.stdout:
        for key, pat in (("addr", r"listening on (\S+) "), ("metrics", r"metrics on (\S+)")):
            m = re.match(pat, line)
            if m:
                found[key] = m.group(1)
        if "addr" in found and ("metrics" in found or "--metrics" not in args):
            return p, found
    sys.exit(f"{path} did not start")


def scrape(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    sums = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        if "action=" in name:
            base += "{" + re.search(r'action="(\w+)"', name).group(1) + "}"
        sums[base] = sums.get(base, 0) + float(value)
    return sums


def trace_fields(stderr):
    rows = []
    for line in stderr.splitlines():
        if "ringport-uring trace" not in line:
            continue
        num = lambda pat: int(re.search(pat, line).group(1)) if re.search(pat, line) else None
        rows.append({"turns": num(r"turns (\d+)"), "completions": num(r"completions (\d+)"),
                     "cqe_p50": num(r"per turn p50 (\d+)"), "cqe_p99": num(r"per turn p50 \d+ p99 (\d+)"),
                     "busy_p50": num(r"busy us p50 (\d+)"), "wait_p50": num(r"wait us p50 (\d+)"),
                     "wait_p99": num(r"wait us p50 \d+ p99 (\d+)"),
                     "runq_ms": num(r"run-queue wait (\d+) ms")})
    return rows


def main():
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    echo, found = start(os.path.join(BIN_DIR, "echo_server"), [], {})
    total = int(CONNS) * int(MSGS)
    runs = {label: [] for label, _ in VARIANTS}
    with open(OUT, "a") as out:
        for r in range(ROUNDS):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for label, spec in order:
                items = [s for s in spec.split(",") if s]
                penv = dict(s.split("=", 1) for s in items if not s.startswith("ARG:"))
                penv.setdefault("RINGPORT_URING_TRACE", "1")
                args = [s[4:] for s in items if s.startswith("ARG:")]
                proxy, pf = start(os.path.join(BIN_DIR, "tcp_proxy"),
                                  ["--upstream", found["addr"], "--metrics", "127.0.0.1:0", *args],
                                  penv, stderr=subprocess.PIPE)
                res = subprocess.run([LOAD, "echo", "--target", pf["addr"], "-c", CONNS, "-l", LEN,
                                      "-n", MSGS, "--json"], capture_output=True, text=True)
                j = json.loads(res.stdout[res.stdout.index("{"):])
                m = scrape(pf["metrics"])
                proxy.send_signal(2)
                _, err = proxy.communicate(timeout=20)
                tr = trace_fields(err)
                row = {"round": r, "variant": label, "env": penv, "args": args, "backend": BACKEND,
                       "conns": CONNS, "len": LEN, "msgs": total,
                       "msg_s": j["messages_per_sec"], "p50_us": j["latency_us"]["p50"],
                       "p90_us": j["latency_us"]["p90"], "errors": j["errors"],
                       "turns_per_msg": m.get("ringport_io_loop_turns_total", 0) / total,
                       "completions_per_msg": m.get("ringport_io_completions_total", 0) / total,
                       "pauses": m.get("ringport_backpressure_pauses_total", 0),
                       "overload": {k: v for k, v in m.items() if "overload_actions" in k and v},
                       "trace": tr, "load": os.getloadavg()[0]}
                out.write(json.dumps(row) + "\n")
                runs[label].append(row)
                print(f"round {r} {label}: {row['msg_s']:.0f} msg/s, p50 {row['p50_us']:.0f} us, "
                      f"turns/msg {row['turns_per_msg']:.2f}, completions/msg "
                      f"{row['completions_per_msg']:.2f}, pauses {row['pauses']:.0f}, "
                      f"overload {row['overload']}, trace {tr}", flush=True)
    echo.terminate()
    echo.wait()
    print(f"\n{CONNS} conns x {LEN} B x {MSGS} messages, {BACKEND}, {ROUNDS} rounds; raw: {OUT}")
    print("| variant | msg/s (median, range) | p50 us (median, range) | turns/msg | completions/msg "
          "| CQEs per turn p50 | wait us p50 / p99 | pauses |")
    print("|---|---|---|---|---|---|---|---|")
    for label, _ in VARIANTS:
        rs = runs[label]
        med = lambda k: statistics.median(x[k] for x in rs)
        rng = lambda k: f"{min(x[k] for x in rs):.0f}-{max(x[k] for x in rs):.0f}"
        tr = [t for x in rs for t in x["trace"]]
        tmed = lambda k: statistics.median(t[k] for t in tr) if tr else float("nan")
        print(f"| {label} | {med('msg_s'):.0f} ({rng('msg_s')}) | {med('p50_us'):.0f} "
              f"({rng('p50_us')}) | {med('turns_per_msg'):.2f} | {med('completions_per_msg'):.2f} "
              f"| {tmed('cqe_p50'):.0f} | {tmed('wait_p50'):.0f} / {tmed('wait_p99'):.0f} "
              f"| {med('pauses'):.0f} |")


if __name__ == "__main__":
    main()
