//! Peer echo server on monoio's io_uring driver (the code is in `src/monoio_echo_linux.rs`):
//! Linux only; elsewhere this binary says so and exits 1.

#[cfg(target_os = "linux")]
#[path = "../monoio_echo_linux.rs"]
mod imp;

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    imp::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("error: monoio_echo needs Linux (monoio's io_uring driver)");
    std::process::exit(1);
}
