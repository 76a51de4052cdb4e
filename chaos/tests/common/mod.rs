//! Shared by the chaos integration tests that run the `opengrid-chaos` binary.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` with stdout and stderr captured, killing it after `limit` (the processes it
/// started die with it: PR_SET_PDEATHSIG). The pipes are drained on threads while it runs, so
/// output larger than a pipe buffer cannot block it. Returns (status, stdout, stderr).
pub fn run_with_deadline(
    cmd: &mut Command,
    limit: Duration,
    what: &str,
) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// `target/<profile>/opengrid`: the test executable lives in `target/<profile>/deps`.
#[allow(dead_code)] // not every test binary that includes this module launches a colony
pub fn opengrid_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = profile_dir.join("opengrid");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p opengrid-examples --bin opengrid`, or \
         scripts/test.sh, which builds the whole workspace)",
        bin.display()
    );
    bin
}
