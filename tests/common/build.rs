//! Building the example servers once per test run, with the test binary's profile, and
//! deciding per backend whether a test runs (io_uring refused: skip, printed, or fail when
//! required).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Instant;

use super::*;

/// Whether `RINGPORT_TEST_REQUIRE_URING` asks for io_uring (any value but `0`).
pub fn uring_required() -> bool {
    std::env::var_os("RINGPORT_TEST_REQUIRE_URING").is_some_and(|v| v != "0")
}

/// `target/<profile>` of this test binary (`target/<profile>/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("test binary {exe:?} is not under target/<profile>/deps"))
        .to_path_buf()
}

/// The test binary's profile name (`debug`, `release` or a custom one).
fn profile_name() -> String {
    profile_dir()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string()
}

/// `cargo build ARGS` for this workspace with the test binary's own profile and target
/// directory.
fn cargo_build_command(args: &[&str]) -> Command {
    let profile_dir = profile_dir();
    let target_dir = profile_dir
        .parent()
        .expect("target dir above the profile dir");
    // The cargo that runs the tests (cargo sets `CARGO` for them), else the one that built them.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    // What cargo sets for this test process describes ringport's test target; inherited, it
    // reaches every build script that watches it (`rerun-if-env-changed`: ring watches
    // CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...), whose fingerprint then flips between this build
    // and the next `cargo test`: ring and everything above it were rebuilt each time.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if is_cargo_test_env(key) {
            cmd.env_remove(key);
        }
    }
    cmd.arg("build")
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match profile_name().as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.arg("--profile").arg(other);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Whether cargo sets the environment variable `key` for the test process it runs (rather
/// than the user setting it for cargo: CARGO_HOME, CARGO_TARGET_DIR, CARGO_PROFILE_* stay).
fn is_cargo_test_env(key: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
        "CARGO_MANIFEST_",
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || [
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&key)
}

/// Runs `cargo build ARGS` for this workspace with the test binary's own profile and target
/// directory; `Err` holds the command and cargo's stderr.
pub fn cargo_build(args: &[&str]) -> Result<(), String> {
    let mut cmd = cargo_build_command(args);
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// One line of build progress on the process's stderr, bypassing the test harness's output
/// capture (`eprintln!` is captured): whoever runs the tests sees it at once.
fn progress(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "[ringport tests] {line}");
    let _ = err.flush();
}

/// What a `compiler-artifact` message of `cargo build --message-format=json` says: the
/// target's name, whether it is an example, and whether it was already up to date.
fn artifact_of(json: &str) -> Option<(&str, bool, bool)> {
    if !json.contains(r#""reason":"compiler-artifact""#) {
        return None;
    }
    let target = &json[json.find(r#""target":{"#)?..];
    let target = &target[..target.find('}')?];
    let name_at = target.find(r#""name":""#)? + r#""name":""#.len();
    let name = &target[name_at..name_at + target[name_at..].find('"')?];
    let example = target.contains(r#""kind":["example"]"#);
    Some((name, example, json.contains(r#""fresh":true"#)))
}

/// Builds every example of this package once per test run, with the profile and target
/// directory of the test binary itself, so that a test never starts a stale server (e.g. after
/// `cargo test --test echo_server`, which does not rebuild examples). Cargo makes this a no-op
/// when they are fresh (`cargo test` with no filter has just built them). The build is
/// visible while it runs: one line per example (and for the library) on stderr as cargo
/// finishes it, then a summary, so the first test never looks hung. A failed build panics: a
/// missing or stale example is a test failure, never a skip.
pub fn ensure_examples_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(build_examples);
    if let Err(e) = result {
        panic!("building the example servers failed: {e}");
    }
}

fn build_examples() -> Result<(), String> {
    let t = Instant::now();
    progress(&format!(
        "building the examples ({}): cargo build --examples ...",
        profile_name()
    ));
    let mut cmd = cargo_build_command(&[
        "--examples",
        "--features",
        "cli",
        "--message-format=json-render-diagnostics",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Drained meanwhile: a full stderr pipe would stall cargo.
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (mut built, mut fresh) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let Ok(line) = line else { break };
        let Some((name, example, up_to_date)) = artifact_of(&line) else {
            continue;
        };
        if example && up_to_date {
            fresh += 1;
        } else if example {
            built += 1;
            let secs = t.elapsed().as_secs_f64();
            progress(&format!("  example {name} built (+{secs:.1} s)"));
        } else if name == "ringport" && !up_to_date {
            let secs = t.elapsed().as_secs_f64();
            progress(&format!("  library ringport built (+{secs:.1} s)"));
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {cmd:?}: {e}"))?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        progress(&format!("building the examples FAILED ({status})"));
        return Err(format!("{cmd:?} failed ({status}):\n{stderr}"));
    }
    progress(&format!(
        "examples ready in {:.1} s: {built} built, {fresh} up to date",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Path of a built example: `target/<profile>/examples/<name>`, built fresh for this run.
pub fn example_path(name: &str) -> PathBuf {
    ensure_examples_built();
    let p = profile_dir().join("examples").join(name);
    assert!(
        p.is_file(),
        "example binary `{name}` not found at {p:?} after `cargo build --examples`"
    );
    p
}

/// The same as [`example_path`] (kept for the tests that call it before starting a server).
pub fn require_example(name: &str) -> PathBuf {
    example_path(name)
}

/// Called by every generated test before running its body: builds the examples (once) and,
/// for io_uring, checks that the backend is available: a precise refusal skips (printed), or
/// fails under `RINGPORT_TEST_REQUIRE_URING=1`.
pub fn prepare(server: &str, backend: Backend) -> Option<Backend> {
    example_path(server);
    if backend == Backend::Uring {
        // Whether io_uring works does not depend on the example (some need arguments to start).
        if let Err(reason) = uring_availability("echo_server") {
            if uring_required() {
                panic!("io_uring required (RINGPORT_TEST_REQUIRE_URING) but unavailable: {reason}");
            }
            println!("skipped: io_uring unavailable: {reason}");
            return None;
        }
    }
    Some(backend)
}

/// Starts `server --backend uring` once (per binary, cached) to find out whether io_uring works.
/// `Err(reason)` only for the documented refusal ([`is_uring_refusal`]); any other start
/// failure panics: that is a bug, not a skip.
pub fn uring_availability(server: &str) -> Result<(), String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache.get(server) {
        return r.clone();
    }
    let result = match ServerBuilder::new(server).backend(Backend::Uring).spawn() {
        Ok(s) => {
            drop(s);
            Ok(())
        }
        Err(StartError::Exited { status, stderr, .. }) if is_uring_refusal(status, &stderr) => {
            Err(uring_refusal_line(&stderr)
                .unwrap_or_default()
                .trim_start_matches(URING_REFUSAL)
                .to_string())
        }
        Err(e) => panic!("probing `{server} --backend uring` failed unexpectedly: {e}"),
    };
    cache.insert(server.to_string(), result.clone());
    result
}

/// The start of the one line an example prints when the engine returns
/// `ringport::Error::UringUnavailable` (then it exits with status 1).
pub const URING_REFUSAL: &str = "error: io_uring unavailable: ";

/// The refusal line in a server's stderr, if there is one.
pub fn uring_refusal_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.starts_with(URING_REFUSAL))
}

/// Whether a server exit is the documented "io_uring unavailable" refusal: exit status 1 and a
/// line starting with [`URING_REFUSAL`]. Nothing else (a panic, a bind error, another message
/// that happens to say "unavailable") counts.
pub fn is_uring_refusal(status: ExitStatus, stderr: &str) -> bool {
    status.code() == Some(1) && uring_refusal_line(stderr).is_some()
}
