#!/usr/bin/env python3
"""tcp_proxy against echo_server direct: ringport-load echo through each, interleaved.

    bench/proxy_compare.py                      # 5 rounds, 10 conns, 64 KiB, 2 s per run
    ROUNDS=7 LEN=128 CONNS=50 bench/proxy_compare.py
    VARIANTS="rb64=--recv-buffer-size,65536" bench/proxy_compare.py   # A/B a tcp_proxy flag
    REFS="copy=--mode,copy splice=--mode,splice" bench/proxy_compare.py  # fwd_proxy references

Environment:
  ROUNDS=5 DURATION=2 WARMUP=1 CONNS=10 LEN=65536 BACKEND=uring CLIENT=event
  BIN_DIR=target/release/examples   echo_server and tcp_proxy (build them with
                                    `cargo build --release --example echo_server --example tcp_proxy`
                                    and `cargo build --release -p ringport-load`)
  VARIANTS="label=ARGS ..."         extra tcp_proxy processes (ARGS: its extra flags, comma
                                    separated; an ARG `ENV:K=V` goes to its environment
                                    instead, `BIN:PATH` names another tcp_proxy binary, e.g.
                                    an older build) run interleaved as `proxy@label`
  PROXY_BIN=BIN_DIR/tcp_proxy       the tcp_proxy binary
  REFS="label=ARGS ..."             reference forwarders (bench's `fwd_proxy`, ARGS: its flags,
                                    comma separated) run interleaved as `ref@label`; build it
                                    with `cargo build --release -p ringport-bench --bin fwd_proxy`
  REF_BIN=target/release/fwd_proxy  the reference forwarder
  NO_PROXY=1                        leave tcp_proxy out (direct and the references only)
  PROXY_ENV="K=V ..."               environment of every tcp_proxy (e.g. an experiment switch)
  OUT=bench/results/proxy-<date>.jsonl   one JSON line per run

Every round runs `direct`, `proxy` and each variant once, the order rotated by one each round.
Figures are medians over the rounds; `ratio` is each target's msg/s over `direct`'s in the
same round, then the median of those (the machine is shared: per-round ratios cancel load
that drifts between rounds). Server CPU per message is the user + system time (/proc/PID/stat)
of echo_server plus tcp_proxy (or the reference forwarder) over the run, divided by the
messages; the forwarder's own part is printed as user + sys. Run-queue wait per message is the
time the process's threads were runnable but not running (/proc/PID/task/*/schedstat, sampled
every 10 ms so that threads living only during the run count too).
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
env = os.environ.get
ROUNDS = int(env("ROUNDS", "5"))
DURATION = env("DURATION", "2")
WARMUP = env("WARMUP", "1")
CONNS = env("CONNS", "10")
LEN = env("LEN", "65536")
BACKEND = env("BACKEND", "uring")
CLIENT = env("CLIENT", "event")
BIN_DIR = env("BIN_DIR", os.path.join(ROOT, "target/release/examples"))
LOAD = env("LOAD", os.path.join(ROOT, "target/release/ringport-load"))
OUT = env("OUT", os.path.join(ROOT, "bench/results",
                              time.strftime("proxy-%Y%m%d-%H%M%S.jsonl", time.gmtime())))
TICK = os.sysconf("SC_CLK_TCK")


def start(path, args, extra_env=None):
    e = dict(os.environ, **(extra_env or {}))
    p = subprocess.Popen([path, "--listen", "127.0.0.1:0", "--backend", BACKEND, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=e)
    for line in p.stdout:
        m = re.match(r"listening on (\S+) ", line)
        if m:
            return p, m.group(1)
    sys.exit(f"{path} did not start")


def cpu(pid):
    """(user, system) seconds of `pid`."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / TICK, int(f[12]) / TICK


def run_delays(pid):
    """Nanoseconds each thread of `pid` has spent runnable but not running (schedstat)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out[tid] = int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[1])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile
    return out


def run_load(cmd, pids):
    """Runs the load client; returns its output and, per pid, the seconds its threads waited
    runnable but not running meanwhile. Threads are sampled every 10 ms, so those that start
    and end during the run (fwd_proxy's, one per direction per session) are counted up to
    their last sample."""
    start = [run_delays(p) for p in pids]
    last = [dict(d) for d in start]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        for seen, p in zip(last, pids):
            seen.update(run_delays(p))
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    out, _ = proc.communicate()
    waited = [sum(v - s.get(t, 0) for t, v in l.items()) / 1e9 for s, l in zip(start, last)]
    return out, waited


def main():
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    echo, echo_addr = start(os.path.join(BIN_DIR, "echo_server"), [])
    penv = dict(kv.split("=", 1) for kv in env("PROXY_ENV", "").split())
    targets = {"direct": (None, echo_addr)}
    procs = [echo]
    variants = [] if env("NO_PROXY") else [("proxy", "")]
    variants += [tuple(v.split("=", 1)) for v in env("VARIANTS", "").split()]
    proxy_bin = env("PROXY_BIN", os.path.join(BIN_DIR, "tcp_proxy"))
    ref_bin = env("REF_BIN", os.path.join(ROOT, "target/release/fwd_proxy"))
    refs = [tuple(v.split("=", 1)) for v in env("REFS", "").split()]
    for kind, (name, extra) in [("proxy", v) for v in variants] + [("ref", v) for v in refs]:
        label = name if name == "proxy" else f"{kind}@{name}"
        extra = [a for a in extra.split(",") if a]
        args = ["--upstream", echo_addr] + [a for a in extra if not a.startswith("ENV:")]
        venv = dict(a[4:].split("=", 1) for a in extra if a.startswith("ENV:"))
        args = [a for a in args if not a.startswith("BIN:")]
        bins = [a[4:] for a in extra if a.startswith("BIN:")]
        path = bins[0] if bins else ref_bin if kind == "ref" else proxy_bin
        p, addr = start(path, args,
                        dict(penv, **venv) if kind == "proxy" else venv)
        procs.append(p)
        targets[label] = (p, addr)
    names = list(targets)
    runs = {n: [] for n in names}
    ratios = {n: [] for n in names}
    load_avg = [os.getloadavg()]
    with open(OUT, "a") as out:
        for r in range(ROUNDS):
            order = names[r % len(names):] + names[:r % len(names)]
            rates = {}
            for n in order:
                proxy, addr = targets[n]
                pids = [echo.pid] + ([proxy.pid] if proxy else [])
                c0 = [cpu(p) for p in pids]
                stdout, waited = run_load([LOAD, "echo", "--target", addr, "-c", CONNS, "-l",
                                           LEN, "-d", DURATION, "--warmup", WARMUP, "--client",
                                           CLIENT, "--json"], pids)
                c1 = [cpu(p) for p in pids]
                j = json.loads(stdout[stdout.index("{"):])
                msgs = j["messages"] * (1 + float(WARMUP) / float(DURATION))
                row = {"round": r, "target": n, "msg_s": j["messages_per_sec"],
                       "mb_s": j["mb_per_sec_received"], "errors": j["errors"],
                       "p50_us": j["latency_us"]["p50"],
                       "cpu_us_per_msg": sum(sum(b) - sum(a) for a, b in zip(c0, c1)) * 1e6 / max(msgs, 1),
                       "echo_cpu_us_per_msg": (sum(c1[0]) - sum(c0[0])) * 1e6 / max(msgs, 1),
                       "proxy_user_us_per_msg": (c1[1][0] - c0[1][0]) * 1e6 / max(msgs, 1) if proxy else 0,
                       "proxy_sys_us_per_msg": (c1[1][1] - c0[1][1]) * 1e6 / max(msgs, 1) if proxy else 0,
                       "proxy_runq_us_per_msg": waited[1] * 1e6 / max(msgs, 1) if proxy else 0,
                       "echo_runq_us_per_msg": waited[0] * 1e6 / max(msgs, 1),
                       "conns": CONNS, "len": LEN, "backend": BACKEND, "client": CLIENT,
                       "load": os.getloadavg()[0]}
                out.write(json.dumps(row) + "\n")
                runs[n].append(row)
                rates[n] = row["msg_s"]
            for n in names:
                ratios[n].append(rates[n] / rates["direct"])
            print(f"round {r}: " + ", ".join(f"{n} {rates[n]:.0f}" for n in names), flush=True)
    load_avg.append(os.getloadavg())
    for p in procs:
        p.terminate()
        p.wait()
    print(f"\n{CONNS} conns x {LEN} B, {BACKEND}, {CLIENT} client, {ROUNDS} rounds of "
          f"{DURATION} s; load average {load_avg[0][0]:.1f} -> {load_avg[1][0]:.1f}; raw: {OUT}")
    print("| target | msg/s (median) | MB/s | p50 us | server CPU us/msg (echo; proxy user + sys) "
          "| run-queue wait us/msg (echo; proxy) | vs direct (median, min-max) |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        med = lambda k: statistics.median(x[k] for x in runs[n])
        rs = ratios[n]
        print(f"| {n} | {med('msg_s'):.0f} | {med('mb_s'):.0f} | {med('p50_us'):.0f} | "
              f"{med('cpu_us_per_msg'):.1f} ({med('echo_cpu_us_per_msg'):.1f}; "
              f"{med('proxy_user_us_per_msg'):.1f} + {med('proxy_sys_us_per_msg'):.1f}) | "
              f"{med('echo_runq_us_per_msg'):.1f}; {med('proxy_runq_us_per_msg'):.1f} | "
              f"{statistics.median(rs):.2f}x "
              f"({min(rs):.2f}-{max(rs):.2f}) |")


if __name__ == "__main__":
    main()
