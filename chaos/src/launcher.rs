//! Starts, kills (-9), pauses (SIGSTOP) and resumes (SIGCONT) child processes, each with its own
//! data directory and log files, and leaves no stray process behind: every child is killed when
//! the [`Launcher`] is dropped, when the harness gets Ctrl-C or SIGTERM
//! ([`install_signal_cleanup`]), and — through `PR_SET_PDEATHSIG` — when the harness itself is
//! killed with -9.
//!
//! `PR_SET_PDEATHSIG` follows the *thread* that spawned the child: spawn from a long-lived thread
//! (the main thread or a runtime worker), never from a `spawn_blocking` thread that may retire.
//!
//! Each child runs in its own process group, so a kill reaches anything it spawned too.
//! The launcher is generic over the command: it runs `opengrid node …`, `opengrid rc …`,
//! `opengrid-ledger replica …` or `opengrid-chaos replica-server …` alike.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Why a launcher operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A binary was not found.
    #[error("binary {name:?} not found; looked in {searched:?} (set OPENGRID_BIN_DIR)")]
    BinaryNotFound {
        /// The binary.
        name: String,
        /// Directories searched.
        searched: Vec<PathBuf>,
    },
    /// No process of that name.
    #[error("no process named {0:?}")]
    Unknown(String),
    /// A process with that name is already running.
    #[error("process {0:?} is already running")]
    AlreadyRunning(String),
    /// The process is not running (killed or exited).
    #[error("process {0:?} is not running")]
    NotRunning(String),
    /// Spawn, signal or file error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// Directory of the OpenGrid binaries: `$OPENGRID_BIN_DIR`, else next to the running executable
/// (or its parent when running from `target/*/deps`).
pub fn find_binary(name: &str) -> Result<PathBuf, LaunchError> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("OPENGRID_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if d.file_name().is_some_and(|n| n == "deps") {
                if let Some(p) = d.parent() {
                    dirs.push(p.to_path_buf());
                }
            }
        }
    }
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(LaunchError::BinaryNotFound {
        name: name.into(),
        searched: dirs,
    })
}

/// A port on 127.0.0.1 that was free a moment ago ([`opengrid_cluster::common::serve::free_local_port`]).
pub fn free_port() -> Result<u16, LaunchError> {
    opengrid_cluster::common::serve::free_local_port().map_err(io("bind a 127.0.0.1 port"))
}

/// An ephemeral 127.0.0.1 address (see [`free_port`]).
pub fn free_addr() -> Result<SocketAddr, LaunchError> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Process groups of every live child of every launcher in this process (for signal cleanup).
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live_groups() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGKILLs every child process group started by any launcher in this process. Safe to call from
/// a signal-handling task; returns how many groups were signalled.
pub fn kill_all_children() -> usize {
    let groups: Vec<i32> = live_groups().iter().copied().collect();
    for g in &groups {
        // SAFETY: plain syscall with integer arguments.
        unsafe {
            libc::killpg(*g, libc::SIGKILL);
        }
    }
    groups.len()
}

/// Spawns a task that, on Ctrl-C (SIGINT) or SIGTERM, kills every child and exits with status
/// 130 (SIGINT) or 143 (SIGTERM). Call once from the binary, inside a tokio runtime.
pub fn install_signal_cleanup() -> Result<(), LaunchError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).map_err(io("install SIGINT handler"))?;
    let mut term = signal(SignalKind::terminate()).map_err(io("install SIGTERM handler"))?;
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
        };
        let n = kill_all_children();
        eprintln!("opengrid-chaos: interrupted; killed {n} child process group(s)");
        std::process::exit(code);
    });
    Ok(())
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct ProcSpec {
    /// Unique name (`n1`, `rc-eu`, `ledger-1`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl ProcSpec {
    /// `program` with no arguments.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        ProcSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// Where a child stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "code")]
pub enum ProcState {
    /// Running.
    Running,
    /// Stopped with SIGSTOP.
    Paused,
    /// Killed by the launcher.
    Killed,
    /// Exited by itself with this code (or -signal).
    Exited(i32),
}

struct Proc {
    spec: ProcSpec,
    child: Option<Child>,
    state: ProcState,
    starts: u32,
}

/// A set of named child processes under one root directory (`<root>/<name>/data`,
/// `<root>/<name>/stdout.log`, `<root>/<name>/stderr.log`).
pub struct Launcher {
    root: PathBuf,
    tmp: Option<tempfile::TempDir>,
    procs: BTreeMap<String, Proc>,
}

impl Launcher {
    /// A launcher rooted in a fresh temporary directory (removed on drop unless
    /// [`keep_files`](Self::keep_files) is called).
    pub fn new() -> Result<Self, LaunchError> {
        let tmp = tempfile::Builder::new()
            .prefix("opengrid-chaos-")
            .tempdir()
            .map_err(io("create temp dir"))?;
        Ok(Launcher {
            root: tmp.path().to_path_buf(),
            tmp: Some(tmp),
            procs: BTreeMap::new(),
        })
    }

    /// A launcher rooted in `dir` (kept).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<Self, LaunchError> {
        let root = dir.into();
        std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
        Ok(Launcher {
            root,
            tmp: None,
            procs: BTreeMap::new(),
        })
    }

    /// Keeps the root directory after drop (to read logs of a failed run); returns its path.
    pub fn keep_files(&mut self) -> PathBuf {
        if let Some(t) = self.tmp.take() {
            let _ = t.keep();
        }
        self.root.clone()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The data directory of `name` (created).
    pub fn data_dir(&self, name: &str) -> Result<PathBuf, LaunchError> {
        let d = self.root.join(name).join("data");
        std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
        Ok(d)
    }

    /// The stdout and stderr log files of `name`.
    pub fn log_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.root.join(name);
        (d.join("stdout.log"), d.join("stderr.log"))
    }

    fn open_log(p: &Path) -> Result<File, LaunchError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(io(format!("open {}", p.display())))
    }

    fn start(&self, spec: &ProcSpec) -> Result<Child, LaunchError> {
        self.data_dir(&spec.name)?;
        let (out, err) = self.log_paths(&spec.name);
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Self::open_log(&out)?)
            .stderr(Self::open_log(&err)?)
            .current_dir(self.root.join(&spec.name));
        // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io(format!(
            "spawn {} ({})",
            spec.name,
            spec.program.display()
        )))?;
        live_groups().insert(child.id() as i32);
        Ok(child)
    }

    /// Starts a new process.
    pub fn spawn(&mut self, spec: ProcSpec) -> Result<u32, LaunchError> {
        if let Some(p) = self.procs.get_mut(&spec.name) {
            if Self::refresh(p) != ProcState::Killed && !matches!(p.state, ProcState::Exited(_)) {
                return Err(LaunchError::AlreadyRunning(spec.name));
            }
        }
        let child = self.start(&spec)?;
        let pid = child.id();
        let starts = self.procs.get(&spec.name).map(|p| p.starts).unwrap_or(0) + 1;
        self.procs.insert(
            spec.name.clone(),
            Proc {
                spec,
                child: Some(child),
                state: ProcState::Running,
                starts,
            },
        );
        Ok(pid)
    }

    /// Starts a killed or exited process again with the same command, data dir and logs.
    pub fn restart(&mut self, name: &str) -> Result<u32, LaunchError> {
        let spec = self
            .procs
            .get(name)
            .ok_or_else(|| LaunchError::Unknown(name.into()))?
            .spec
            .clone();
        self.spawn(spec)
    }

    fn get(&mut self, name: &str) -> Result<&mut Proc, LaunchError> {
        self.procs
            .get_mut(name)
            .ok_or_else(|| LaunchError::Unknown(name.into()))
    }

    fn refresh(p: &mut Proc) -> ProcState {
        if let Some(c) = p.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                live_groups().remove(&(c.id() as i32));
                // Kill whatever the child left in its group.
                // SAFETY: plain syscall.
                unsafe {
                    libc::killpg(c.id() as i32, libc::SIGKILL);
                }
                p.child = None;
                if p.state != ProcState::Killed {
                    p.state =
                        ProcState::Exited(st.code().unwrap_or_else(|| -st.signal().unwrap_or(0)));
                }
            }
        }
        p.state
    }

    /// The process's state (reaps it if it exited).
    pub fn state(&mut self, name: &str) -> Result<ProcState, LaunchError> {
        Ok(Self::refresh(self.get(name)?))
    }

    /// Its pid while it runs.
    pub fn pid(&mut self, name: &str) -> Result<Option<u32>, LaunchError> {
        let p = self.get(name)?;
        Self::refresh(p);
        Ok(p.child.as_ref().map(|c| c.id()))
    }

    /// How many times it was started.
    pub fn starts(&self, name: &str) -> u32 {
        self.procs.get(name).map(|p| p.starts).unwrap_or(0)
    }

    /// Names of every process.
    pub fn names(&self) -> Vec<String> {
        self.procs.keys().cloned().collect()
    }

    fn signal(&mut self, name: &str, sig: i32) -> Result<&mut Proc, LaunchError> {
        let p = self.get(name)?;
        Self::refresh(p);
        let Some(c) = p.child.as_ref() else {
            return Err(LaunchError::NotRunning(name.into()));
        };
        // SAFETY: plain syscall; the group is our child's and it has not been reaped.
        if unsafe { libc::killpg(c.id() as i32, sig) } != 0 {
            return Err(LaunchError::Io {
                what: format!("signal {sig} to {name}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(p)
    }

    /// SIGKILLs the process (and its group) and reaps it.
    pub fn kill(&mut self, name: &str) -> Result<(), LaunchError> {
        let p = self.signal(name, libc::SIGKILL)?;
        p.state = ProcState::Killed;
        if let Some(mut c) = p.child.take() {
            let _ = c.wait();
            live_groups().remove(&(c.id() as i32));
        }
        Ok(())
    }

    /// SIGSTOPs the process.
    pub fn pause(&mut self, name: &str) -> Result<(), LaunchError> {
        self.signal(name, libc::SIGSTOP)?.state = ProcState::Paused;
        Ok(())
    }

    /// SIGCONTs the process.
    pub fn resume(&mut self, name: &str) -> Result<(), LaunchError> {
        self.signal(name, libc::SIGCONT)?.state = ProcState::Running;
        Ok(())
    }

    /// SIGTERMs the process and waits up to `grace` for it to exit, then SIGKILLs it.
    pub fn stop(&mut self, name: &str, grace: Duration) -> Result<ProcState, LaunchError> {
        self.signal(name, libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
        loop {
            let st = self.state(name)?;
            if matches!(st, ProcState::Exited(_) | ProcState::Killed) {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.kill(name)?;
                return Ok(ProcState::Killed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills every process (paused ones too) and reaps them.
    pub fn shutdown(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(mut c) = p.child.take() {
                // SAFETY: plain syscall on our own child's group.
                unsafe {
                    libc::killpg(c.id() as i32, libc::SIGKILL);
                }
                let _ = c.wait();
                live_groups().remove(&(c.id() as i32));
                p.state = ProcState::Killed;
            }
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether `pid` is a live (not zombie) process, from `/proc/<pid>/stat`.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the parenthesised command name.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// The `/proc` state letter of `pid` (`R`, `S`, `T` for stopped, `Z`…).
pub fn pid_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next())
}
