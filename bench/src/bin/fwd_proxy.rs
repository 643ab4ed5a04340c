//! A minimal two-hop TCP forwarder, the reference tcp_proxy is measured against (the code is
//! in `src/fwd_proxy_linux.rs`): a blocking thread per direction, moving bytes by read/write,
//! splice(2), io_uring recv/send, IORING_OP_SPLICE or IORING_OP_SEND_ZC (`--mode`).
//! Linux only; elsewhere this binary says so and exits 1.
//!
//! ```text
//! fwd_proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:5001 --mode splice
//! ```

#[cfg(target_os = "linux")]
#[path = "../fwd_proxy_linux.rs"]
mod imp;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    imp::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("error: fwd_proxy needs Linux (splice, io_uring)");
    std::process::exit(1);
}
