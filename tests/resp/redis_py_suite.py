#!/usr/bin/env python3
"""redis-py (a client nobody here wrote) against resp_server.

Usage: redis_py_suite.py PORT
Runs every check twice: with RESP2 and with RESP3 (`HELLO 3`, redis-py 8's default).
Covers every command of the server, expiry, a 1,000-command pipeline, binary-safe keys and values
(all 256 byte values), a 16 MiB value, an MGET reply built in parts and concurrent clients incrementing one key to the exact
total. Prints one `ok: ...` line per check; any failure raises (non-zero exit).
"""
import sys
import threading
import time

import redis


def wait_until(what, pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


def expect_error(fn, text):
    try:
        fn()
    except redis.ResponseError as e:
        assert str(e) == text, f"error text {str(e)!r}, expected {text!r}"
        return
    raise AssertionError(f"expected the error {text!r}")


PROTO = 2


def ok(what):
    print(f"ok (RESP{PROTO}): {what}", flush=True)


def client(port):
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=PROTO)


def run(port):
    r = client(port)
    r.flushall()

    assert r.ping() is True
    assert r.echo(b"hello") == b"hello"
    ok("PING, ECHO")

    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.get("missing") is None
    assert r.set("k", "w", nx=True) is None
    assert r.set("new", "x", xx=True) is None
    assert r.set("k", "w", xx=True) is True and r.get("k") == b"w"
    assert r.set("n1", "1", nx=True) is True
    assert r.getset("k", "z") == b"w" and r.get("k") == b"z"
    assert r.getset("fresh", "1") is None
    ok("SET NX/XX, GET, GETSET")

    r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.mget("a", "b", "nope", "c") == [b"1", b"2", None, b"3"]
    assert r.exists("a", "b", "nope", "a") == 3
    assert r.delete("a", "b", "nope") == 2
    assert r.exists("a") == 0
    ok("MSET, MGET, EXISTS, DEL")

    assert r.incr("n") == 1
    assert r.incrby("n", 41) == 42
    assert r.decr("n") == 41
    assert r.decrby("n", 40) == 1
    assert r.get("n") == b"1"
    r.set("text", "abc")
    expect_error(lambda: r.incr("text"), "value is not an integer or out of range")
    r.set("big", str(2**63 - 1))
    expect_error(lambda: r.incr("big"), "increment or decrement would overflow")
    ok("INCR, INCRBY, DECR, DECRBY and their errors")

    assert r.append("s", "foo") == 3
    assert r.append("s", "bar") == 6
    assert r.strlen("s") == 6 and r.strlen("nope") == 0
    assert r.get("s") == b"foobar"
    ok("APPEND, STRLEN")

    r.set("t", "v")
    assert r.ttl("t") == -1 and r.pttl("t") == -1 and r.ttl("nope") == -2
    assert r.expire("t", 100) is True
    assert 99 <= r.ttl("t") <= 100
    assert r.pexpire("t", 50000) is True
    assert 49000 < r.pttl("t") <= 50000
    assert r.persist("t") is True and r.ttl("t") == -1
    assert r.persist("t") is False
    assert r.expire("nope", 10) is False
    # Long enough that e1 is still there two round trips later on a loaded machine.
    r.set("e1", "v", px=1500)
    r.set("e2", "v", ex=100)
    assert 0 < r.pttl("e1") <= 1500 and 99 <= r.ttl("e2") <= 100
    r.set("e3", "v")
    assert r.pexpire("e3", 150) is True
    wait_until("keys with PX 1500 and 150 expire", lambda: r.get("e1") is None and r.get("e3") is None)
    assert r.exists("e1", "e3") == 0 and r.get("e2") == b"v"
    r.set("e4", "v")
    assert r.expire("e4", -1) is True and r.exists("e4") == 0
    r.set("e5", "v", ex=100)
    r.incr("e5c")
    r.set("e5c", "5", px=100000)
    assert r.incr("e5c") == 6 and r.pttl("e5c") > 90000  # INCR keeps the expiry
    r.set("e5c", "7")
    assert r.ttl("e5c") == -1  # SET clears it
    ok("EXPIRE, PEXPIRE, TTL, PTTL, PERSIST, SET EX/PX, expiry")

    assert r.execute_command("SELECT", 0) in (True, b"OK")
    assert r.config_get("save") == {"save": ""}
    assert r.config_get("appendonly") == {"appendonly": "no"}
    assert r.client_setname("tester") is True and r.client_getname() in ("tester", b"tester")
    hello = r.execute_command("HELLO", PROTO)
    assert b"proto" in hello or "proto" in hello
    assert "redis_version" in r.info()
    ok("SELECT, CONFIG GET, CLIENT SETNAME/GETNAME, HELLO, INFO")

    expect_error(lambda: r.execute_command("FOO", "a", "b"),
                 "unknown command 'FOO', with args beginning with: 'a' 'b' ")
    expect_error(lambda: r.execute_command("GET"), "wrong number of arguments for 'get' command")
    expect_error(lambda: r.execute_command("SET", "k", "v", "EX", "x"),
                 "value is not an integer or out of range")
    expect_error(lambda: r.execute_command("SET", "k", "v", "NX", "XX"), "syntax error")
    ok("error replies")

    size = r.dbsize()
    assert size > 0
    assert r.flushall() is True and r.dbsize() == 0
    ok("DBSIZE, FLUSHALL")

    # Pipelining: 1,000 commands in one round trip, answered in order.
    p = r.pipeline(transaction=False)
    for i in range(500):
        p.set(f"p{i}", i)
        p.incr("pcount")
    res = p.execute()
    assert len(res) == 1000
    assert all(x is True for x in res[0::2])
    assert res[1::2] == list(range(1, 501))
    p = r.pipeline(transaction=False)
    for i in range(1000):
        p.get(f"p{i % 500}")
    assert p.execute() == [str(i % 500).encode() for i in range(1000)]
    ok("pipeline of 1,000 commands answered in order")

    # Binary safety: every byte value in keys and values.
    all_bytes = bytes(range(256))
    r.set(all_bytes, all_bytes * 3)
    assert r.get(all_bytes) == all_bytes * 3
    for b in range(256):
        r.set(b"bin:" + bytes([b]), bytes([b]) + b"\r\n" + bytes([b]))
    for b in range(256):
        assert r.get(b"bin:" + bytes([b])) == bytes([b]) + b"\r\n" + bytes([b])
    assert r.strlen(all_bytes) == 768
    ok("binary-safe keys and values (all 256 byte values)")

    # A 16 MiB value.
    big = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    assert r.set("big16", big) is True
    assert r.strlen("big16") == len(big)
    assert r.get("big16") == big
    # An MGET reply of 48 MiB: built in parts as the client reads (past 4 MiB queued the
    # server waits for the client between two values).
    parts = r.mget(["big16", "nope", "big16", "nope", "big16"])
    assert parts == [big, None, big, None, big]
    assert r.delete("big16") == 1
    ok("16 MiB value stored and read back, and an MGET of 48 MiB")

    # Concurrent clients incrementing one key.
    threads, per = 8, 250
    errors = []

    def worker():
        c = client(port)
        try:
            for _ in range(per):
                c.incr("shared")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    assert int(r.get("shared")) == threads * per, r.get("shared")
    ok(f"{threads} concurrent clients incremented one key to exactly {threads * per}")

    assert r.execute_command("QUIT") in (True, b"OK")
    ok("QUIT")


if __name__ == "__main__":
    print(f"redis-py {redis.__version__}", flush=True)
    for PROTO in (2, 3):
        run(int(sys.argv[1]))
    print("all redis-py checks passed", flush=True)
