#!/usr/bin/env python3
"""What a pipe pair per proxied session would cost (splice(2) forwarding, issue 24): makes
pipes until the kernel gives new ones less than the default 64 KiB, then reports how many
it took, the size they shrank to, and the limits involved. Closes everything before it exits.

    bench/pipe_limits.py            # at most MAX=4096 pipes (8,192 descriptors)
    setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all /usr/bin/python3 \
        bench/pipe_limits.py        # as an unprivileged user (root is exempt from the limit)

Linux accounts each pipe's buffer pages to its user at creation (16 pages by default); past
/proc/sys/fs/pipe-user-pages-soft for the user, new pipes get the minimum (2 pages) instead,
unless the process has CAP_SYS_RESOURCE or CAP_SYS_ADMIN. Pipes the same user already holds
elsewhere count too, so the figure is what was left at the time.
"""

import fcntl
import os
import resource

F_GETPIPE_SZ = 1032
MAX = int(os.environ.get("MAX", "4096"))


def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return "?"


def main():
    soft_fd, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(MAX, (soft_fd - 64) // 2)
    pipes, sizes = [], {}
    shrank_at = None
    try:
        for i in range(limit):
            r, w = os.pipe()
            pipes.append((r, w))
            size = fcntl.fcntl(w, F_GETPIPE_SZ)
            sizes[size] = sizes.get(size, 0) + 1
            if size < 65536 and shrank_at is None:
                shrank_at = i
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    print(f"pipe-user-pages-soft {read('/proc/sys/fs/pipe-user-pages-soft')} pages, "
          f"pipe-user-pages-hard {read('/proc/sys/fs/pipe-user-pages-hard')}, "
          f"pipe-max-size {read('/proc/sys/fs/pipe-max-size')} B, RLIMIT_NOFILE {soft_fd}")
    print(f"made {len(pipes)} pipes; sizes: "
          + ", ".join(f"{n} x {s // 1024} KiB" for s, n in sorted(sizes.items(), reverse=True)))
    if shrank_at is None:
        print("no pipe came out smaller than 64 KiB")
    else:
        print(f"pipe {shrank_at + 1} was the first smaller than 64 KiB: with a pipe per direction, "
              f"about {shrank_at // 2} spliced sessions get full-size pipes")


if __name__ == "__main__":
    main()
