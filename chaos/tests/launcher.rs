//! The process launcher: logs, kill -9, pause/resume, restart, and no stray processes — on drop,
//! on Ctrl-C (SIGINT) of the harness, and when the harness itself is killed with -9.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opengrid_chaos::launcher::{pid_alive, pid_state, LaunchError, Launcher, ProcSpec, ProcState};

fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sh(name: &str, script: &str) -> ProcSpec {
    ProcSpec::new(name, "/bin/sh").args(["-c", script])
}

#[test]
fn logs_pause_resume_kill_restart_and_drop() {
    let mut l = Launcher::new().unwrap();
    let pid = l
        .spawn(sh("a", "echo started-$X; echo oops >&2; exec sleep 3600").env("X", "ok"))
        .unwrap();
    let (out, err) = l.log_paths("a");
    eventually("stdout captured", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("started-ok"))
    });
    eventually("stderr captured", Duration::from_secs(10), || {
        std::fs::read_to_string(&err).is_ok_and(|s| s.contains("oops"))
    });
    assert!(l.data_dir("a").unwrap().is_dir());
    assert!(matches!(
        l.spawn(sh("a", "true")),
        Err(LaunchError::AlreadyRunning(_))
    ));
    l.pause("a").unwrap();
    eventually("stopped", Duration::from_secs(10), || {
        pid_state(pid) == Some('T')
    });
    assert_eq!(l.state("a").unwrap(), ProcState::Paused);
    l.resume("a").unwrap();
    eventually("running again", Duration::from_secs(10), || {
        pid_state(pid).is_some_and(|s| s != 'T')
    });
    l.kill("a").unwrap();
    assert!(!pid_alive(pid));
    assert_eq!(l.state("a").unwrap(), ProcState::Killed);
    assert!(matches!(l.pause("a"), Err(LaunchError::NotRunning(_))));
    let pid2 = l.restart("a").unwrap();
    assert_ne!(pid, pid2);
    assert_eq!(l.starts("a"), 2);
    // The restart appends to the same log.
    eventually("second start logged", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.matches("started-ok").count() == 2)
    });
    // A child that exits by itself is reported with its code.
    l.spawn(sh("b", "exit 7")).unwrap();
    eventually("b exited", Duration::from_secs(10), || {
        l.state("b").unwrap() == ProcState::Exited(7)
    });
    // A paused child is killed by drop too.
    l.pause("a").unwrap();
    drop(l);
    assert!(!pid_alive(pid2), "drop must kill every child");
    assert!(matches!(
        Launcher::new().unwrap().kill("nope"),
        Err(LaunchError::Unknown(_))
    ));
}

#[test]
fn stop_sends_sigterm_then_kills_after_grace() {
    let mut l = Launcher::new().unwrap();
    // The shell prints `ready` only after its TERM trap is installed, so the test never races
    // the trap (under load a SIGTERM sent right after spawn would kill the shell by signal).
    l.spawn(sh(
        "polite",
        "trap 'exit 3' TERM; echo ready; while :; do sleep 0.01; done",
    ))
    .unwrap();
    // Ignoring TERM survives the exec; `ready` again marks the disposition as installed.
    l.spawn(sh("stubborn", "trap '' TERM; echo ready; exec sleep 3600"))
        .unwrap();
    for name in ["polite", "stubborn"] {
        let (out, _) = l.log_paths(name);
        eventually(
            &format!("{name} installed its trap"),
            Duration::from_secs(30),
            || std::fs::read_to_string(&out).is_ok_and(|s| s.contains("ready")),
        );
    }
    let st = l.stop("polite", Duration::from_secs(10)).unwrap();
    assert_eq!(st, ProcState::Exited(3));
    let st = l.stop("stubborn", Duration::from_millis(300)).unwrap();
    assert_eq!(st, ProcState::Killed);
}

fn read_pids(f: &Path) -> Option<Vec<u32>> {
    let t = std::fs::read_to_string(f).ok()?;
    Some(t.lines().filter_map(|l| l.parse().ok()).collect())
}

fn harness_with_children(dir: &Path) -> (std::process::Child, Vec<u32>) {
    let pid_file = dir.join("pids");
    let child = Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
        .args(["spawn-children", "--n", "3", "--pid-file"])
        .arg(&pid_file)
        // A harness killed with -9 cannot remove its directory: it goes with this test's.
        .env("TMPDIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    eventually(
        "children started",
        Duration::from_secs(30),
        || match read_pids(&pid_file) {
            Some(p) if p.len() == 3 => {
                pids = p;
                true
            }
            _ => false,
        },
    );
    for p in &pids {
        assert!(pid_alive(*p));
    }
    (child, pids)
}

#[test]
fn ctrl_c_on_the_harness_leaves_no_stray_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, pids) = harness_with_children(dir.path());
    // SAFETY: plain syscall to our own child.
    unsafe {
        libc::kill(h.id() as i32, libc::SIGINT);
    }
    let mut status = None;
    eventually("harness exited", Duration::from_secs(30), || {
        status = h.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(130));
    eventually("children gone", Duration::from_secs(10), || {
        pids.iter().all(|p| !pid_alive(*p))
    });
}

#[test]
fn kill_9_of_the_harness_leaves_no_stray_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut h, pids) = harness_with_children(dir.path());
    h.kill().unwrap();
    h.wait().unwrap();
    eventually("children gone", Duration::from_secs(10), || {
        pids.iter().all(|p| !pid_alive(*p))
    });
}
