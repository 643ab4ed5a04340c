#!/usr/bin/env python3
"""Runs a command with io_uring denied to it and to every process it starts.

    python3 tests/tools/deny_io_uring.py [--errno EPERM|ENOSYS] cargo test --workspace

Installs a seccomp filter that makes io_uring_setup(2) fail with EPERM (io_uring disabled by
policy; ENOSYS: a kernel without it), then execs the command. It is how TESTING.md checks the
skip rules (the whole suite with io_uring refused must fail under RINGPORT_TEST_REQUIRE_URING=1
and skip visibly without it) without touching the machine-wide kernel.io_uring_disabled.
x86_64 and aarch64 only.
"""
import ctypes
import errno
import os
import platform
import struct
import sys

ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
IO_URING_SETUP = 425  # the same number on x86_64 and aarch64

BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
BPF_RET_K = 0x06 | 0x00
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2


def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main():
    args = sys.argv[1:]
    err = errno.EPERM
    if len(args) >= 2 and args[0] == "--errno":
        err = getattr(errno, args[1])
        args = args[2:]
    if not args:
        sys.exit(__doc__)
    arch = ARCH.get(platform.machine())
    if arch is None:
        sys.exit(f"deny_io_uring: unsupported architecture {platform.machine()}")
    prog = b"".join(
        [
            insn(BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
            insn(BPF_JMP_JEQ_K, 1, 0, arch),
            insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            insn(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
            insn(BPF_JMP_JEQ_K, 0, 1, IO_URING_SETUP),
            insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | (err & 0xFFFF)),
            insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ]
    )
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        sys.exit(f"deny_io_uring: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        sys.exit(f"deny_io_uring: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
