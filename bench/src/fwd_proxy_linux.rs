//! The body of `fwd_proxy` (see `src/bin/fwd_proxy.rs`): a minimal TCP forwarder, one
//! blocking thread per direction of each session, moving bytes by one of five methods.
//!
//! It is the reference for "the best a two-hop path allows": no event loop, no queue, no
//! flow control beyond the socket buffers, and the fewest system calls a forwarder can make
//! (one receive and one send per chunk per direction, or two splices). The modes:
//!
//! - `copy`: read(2) into a buffer, write(2) out (two copies through user space);
//! - `splice`: splice(2) socket -> pipe -> socket (what an epoll backend would do);
//! - `uring-copy`: the same as `copy`, each operation an io_uring recv / send;
//! - `uring-splice`: IORING_OP_SPLICE socket -> pipe, then pipe -> socket;
//! - `uring-sendzc`: io_uring recv, then IORING_OP_SEND_ZC for chunks of at least
//!   `--zc-threshold` bytes (a plain send below it); the buffer is reused only after the
//!   kernel's notification that it let go of the pages.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use clap::{Parser, ValueEnum};
use io_uring::{cqueue, opcode, types, IoUring};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Copy,
    Splice,
    UringCopy,
    UringSplice,
    UringSendzc,
}

#[derive(Parser, Debug)]
#[command(about = "minimal two-hop TCP forwarder (a reference for tcp_proxy)")]
struct Args {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:5007")]
    listen: SocketAddr,
    /// Where every accepted connection is forwarded
    #[arg(long)]
    upstream: SocketAddr,
    /// How bytes are moved
    #[arg(long, value_enum, default_value = "copy")]
    mode: Mode,
    /// Bytes per receive / splice (and the pipe's size for the splice modes)
    #[arg(long, default_value_t = 64 << 10)]
    buf: usize,
    /// uring-sendzc: chunks smaller than this go by a plain send
    #[arg(long, default_value_t = 0)]
    zc_threshold: usize,
    /// Accepted for CLI compatibility with bench/proxy_compare.py; unused
    #[arg(long)]
    backend: Option<String>,
}

pub fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)?;
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "listening on {} (fwd_proxy {:?})",
            listener.local_addr()?,
            args.mode
        )?;
        out.flush()?;
    }
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let upstream = match TcpStream::connect(args.upstream) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("connect: {e}");
                continue;
            }
        };
        for s in [&client, &upstream] {
            s.set_nodelay(true)?;
        }
        let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
        let (mode, buf, zc) = (args.mode, args.buf, args.zc_threshold);
        spawn(move || pump(mode, buf, zc, client, upstream));
        spawn(move || pump(mode, buf, zc, u2, c2));
    }
    Ok(())
}

fn spawn(f: impl FnOnce() -> io::Result<()> + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(move || {
            if let Err(e) = f() {
                if e.kind() != io::ErrorKind::ConnectionReset {
                    eprintln!("pump: {e}");
                }
            }
        })
        .expect("spawn");
}

/// Moves everything from `src` to `dst`, then passes the EOF on as a FIN.
fn pump(mode: Mode, buf: usize, zc: usize, src: TcpStream, dst: TcpStream) -> io::Result<()> {
    let r = match mode {
        Mode::Copy => copy(buf, &src, &dst),
        Mode::Splice => splice(buf, &src, &dst),
        Mode::UringCopy => uring(buf, usize::MAX, &src, &dst),
        Mode::UringSendzc => uring(buf, zc, &src, &dst),
        Mode::UringSplice => uring_splice(buf, &src, &dst),
    };
    let _ = dst.shutdown(Shutdown::Write);
    r
}

fn copy(buf: usize, mut src: &TcpStream, mut dst: &TcpStream) -> io::Result<()> {
    let mut b = vec![0u8; buf];
    loop {
        let n = src.read(&mut b)?;
        if n == 0 {
            return Ok(());
        }
        dst.write_all(&b[..n])?;
    }
}

struct Pipe(RawFd, RawFd);

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fds[1] is the pipe just made; F_SETPIPE_SZ takes an int size. A failure
        // leaves the default (64 KiB), which is fine.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size as libc::c_int) };
        Ok(Pipe(fds[0], fds[1]))
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both descriptors are owned by this Pipe and closed once.
        unsafe {
            libc::close(self.0);
            libc::close(self.1);
        }
    }
}

fn check(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn splice(buf: usize, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let pipe = Pipe::new(buf)?;
    let flags = libc::SPLICE_F_MOVE;
    let null = std::ptr::null_mut();
    loop {
        // SAFETY: plain descriptor arguments, null offsets (sockets and pipes have none).
        let n = check(unsafe { libc::splice(src.as_raw_fd(), null, pipe.1, null, buf, flags) })?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            // SAFETY: as above.
            let m = unsafe { libc::splice(pipe.0, null, dst.as_raw_fd(), null, left, flags) };
            left -= check(m)?;
        }
    }
}

/// Submits what is queued and waits for one completion: (result, flags).
fn one(ring: &mut IoUring) -> io::Result<(i32, u32)> {
    loop {
        if let Some(c) = ring.completion().next() {
            return Ok((c.result(), c.flags()));
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

fn push(ring: &mut IoUring, e: io_uring::squeue::Entry) {
    // SAFETY: every buffer and descriptor an entry names outlives its completion (each call
    // waits for its completions before the buffer is touched again or dropped).
    unsafe { ring.submission().push(&e).expect("ring full") };
}

fn res(r: i32) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r))
    } else {
        Ok(r as usize)
    }
}

/// io_uring recv / send (or SEND_ZC from `zc` bytes on), one operation in flight.
fn uring(buf: usize, zc: usize, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let mut ring = IoUring::new(8)?;
    let mut b = vec![0u8; buf];
    let (s, d) = (types::Fd(src.as_raw_fd()), types::Fd(dst.as_raw_fd()));
    loop {
        push(
            &mut ring,
            opcode::Recv::new(s, b.as_mut_ptr(), buf as u32).build(),
        );
        let n = res(one(&mut ring)?.0)?;
        if n == 0 {
            return Ok(());
        }
        let mut off = 0;
        while off < n {
            let p = b[off..n].as_ptr();
            let len = (n - off) as u32;
            if n - off >= zc {
                push(&mut ring, opcode::SendZc::new(d, p, len).build());
                let (r, flags) = one(&mut ring)?;
                if cqueue::more(flags) {
                    // The notification: the kernel no longer holds the buffer's pages.
                    let (_, nf) = one(&mut ring)?;
                    debug_assert!(cqueue::notif(nf));
                }
                off += res(r)?;
            } else {
                push(&mut ring, opcode::Send::new(d, p, len).build());
                off += res(one(&mut ring)?.0)?;
            }
        }
    }
}

/// IORING_OP_SPLICE socket -> pipe, then pipe -> socket until the pipe is empty.
fn uring_splice(buf: usize, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let pipe = Pipe::new(buf)?;
    let mut ring = IoUring::new(8)?;
    let (s, d) = (types::Fd(src.as_raw_fd()), types::Fd(dst.as_raw_fd()));
    let (pr, pw) = (types::Fd(pipe.0), types::Fd(pipe.1));
    let flags = libc::SPLICE_F_MOVE;
    loop {
        let e = opcode::Splice::new(s, -1, pw, -1, buf as u32)
            .flags(flags)
            .build();
        push(&mut ring, e);
        let n = res(one(&mut ring)?.0)?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let e = opcode::Splice::new(pr, -1, d, -1, left as u32)
                .flags(flags)
                .build();
            push(&mut ring, e);
            left -= res(one(&mut ring)?.0)?;
        }
    }
}
