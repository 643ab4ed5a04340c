//! Backend selection through the CLI and `RINGPORT_BACKEND`, and the io_uring → epoll fallback
//! (io_uring made unavailable with a seccomp filter on `io_uring_setup`, in the child only).
// The process harness (tests/common) is Linux-only (seccomp, rlimits, signals); on Windows the
// example servers are checked under Wine from Linux instead (ci/windows/check_servers.py).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use common::*;

const SERVER: &str = "echo_server";

backend_tests!("echo_server"; env_var_selects_backend);

/// `RINGPORT_BACKEND=<b>` without `--backend` selects `<b>`.
fn env_var_selects_backend(backend: Backend) {
    let s = ServerBuilder::new(SERVER)
        .env("RINGPORT_BACKEND", backend.name())
        .start();
    assert_eq!(
        s.backend,
        backend.name(),
        "RINGPORT_BACKEND={backend} but the server says backend: {}",
        s.backend
    );
    let mut c = s.connect();
    echo_round_trip(&mut c, b"env selected", "echo");
}

fn expected_auto() -> &'static str {
    match uring_availability(SERVER) {
        Ok(()) => "uring",
        Err(reason) if uring_required() => {
            panic!("io_uring required (RINGPORT_TEST_REQUIRE_URING) but unavailable: {reason}")
        }
        Err(reason) => {
            println!("io_uring unavailable here ({reason}): auto must pick epoll");
            "epoll"
        }
    }
}

/// `--backend auto`, `RINGPORT_BACKEND=auto` and no selection at all pick io_uring when it works,
/// epoll otherwise.
#[test]
fn auto_prefers_uring_when_available() {
    require_example(SERVER);
    let want = expected_auto();
    let servers = [
        (
            "--backend auto",
            ServerBuilder::new(SERVER).backend(Backend::Auto).start(),
        ),
        (
            "RINGPORT_BACKEND=auto",
            ServerBuilder::new(SERVER)
                .env("RINGPORT_BACKEND", "auto")
                .start(),
        ),
        ("no selection", ServerBuilder::new(SERVER).start()),
    ];
    for (how, s) in servers {
        assert_eq!(s.backend, want, "{how}: backend");
        let mut c = s.connect();
        echo_round_trip(&mut c, how.as_bytes(), how);
    }
}

fn assert_uring_refused(err: Result<Server, StartError>, how: &str) {
    match err {
        Ok(s) => panic!(
            "{how}: io_uring_setup denied, yet the server started with backend {}",
            s.backend
        ),
        Err(StartError::Exited {
            status,
            stdout,
            stderr,
        }) => {
            assert!(
                !stdout.contains("listening on"),
                "{how}: printed a listening line: {stdout:?}"
            );
            assert!(
                is_uring_refusal(status, &stderr),
                "{how}: expected exit status 1 and a line starting with {URING_REFUSAL:?}, got \
                 {status} and stderr {stderr:?}"
            );
            println!(
                "{how}: exit {status}, error: {}",
                uring_refusal_line(&stderr).unwrap_or_default()
            );
        }
        Err(e) => panic!("{how}: unexpected start failure: {e}"),
    }
}

/// With io_uring unavailable (ENOSYS: kernel without it; EPERM: disabled by policy),
/// `--backend uring` and `RINGPORT_BACKEND=uring` exit non-zero with a one-line error, and
/// `auto` falls back to epoll and serves.
#[test]
fn uring_unavailable_refused_or_fallback() {
    require_example(SERVER);
    for (errno, name) in [(libc::ENOSYS, "ENOSYS"), (libc::EPERM, "EPERM")] {
        assert_uring_refused(
            ServerBuilder::new(SERVER)
                .backend(Backend::Uring)
                .deny_io_uring(errno)
                .spawn(),
            &format!("--backend uring, io_uring_setup -> {name}"),
        );
        assert_uring_refused(
            ServerBuilder::new(SERVER)
                .env("RINGPORT_BACKEND", "uring")
                .deny_io_uring(errno)
                .spawn(),
            &format!("RINGPORT_BACKEND=uring, io_uring_setup -> {name}"),
        );
        for (how, b) in [
            (
                "--backend auto",
                ServerBuilder::new(SERVER).backend(Backend::Auto),
            ),
            ("no selection", ServerBuilder::new(SERVER)),
        ] {
            let s = b.deny_io_uring(errno).start();
            assert_eq!(s.backend, "epoll", "{how} with io_uring_setup -> {name}");
            let mut c = s.connect();
            echo_round_trip(&mut c, b"fallback", "echo on the fallback");
        }
        // epoll explicitly is unaffected.
        let s = ServerBuilder::new(SERVER)
            .backend(Backend::Epoll)
            .deny_io_uring(errno)
            .start();
        let mut c = s.connect();
        echo_round_trip(&mut c, b"epoll", "echo on epoll");
    }
}

/// An unknown backend name is a usage error: non-zero exit, no listening line.
#[test]
fn unknown_backend_is_an_error() {
    require_example(SERVER);
    match ServerBuilder::new(SERVER)
        .args(&["--backend", "kqueue"])
        .spawn()
    {
        Ok(s) => panic!("--backend kqueue was accepted (backend: {})", s.backend),
        Err(StartError::Exited { status, stdout, .. }) => {
            assert!(!status.success(), "exit status {status}");
            assert!(!stdout.contains("listening on"), "{stdout:?}");
        }
        Err(e) => panic!("unexpected: {e}"),
    }
}
