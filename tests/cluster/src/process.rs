//! Child processes that never outlive their parent.
//!
//! Every process started here gets its own process group (so stopping it stops
//! whatever it forked) and `PR_SET_PDEATHSIG(SIGKILL)` (so a parent killed by
//! `kill -9` or a crashed test leaves no orphan holding ports).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Makes the child a process group leader that dies with its parent.
///
/// # Safety
/// Runs between fork and exec: only async-signal-safe calls.
pub(crate) fn own_group_and_die_with_parent(cmd: &mut Command) {
    // SAFETY: setpgid and prctl are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the whole process group led by `pid`.
pub(crate) fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// A long-running component (etcd, kube-apiserver, ...) with its log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: std::path::PathBuf,
}

impl ManagedProcess {
    /// Starts `bin args...` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, bin: &Path, args: &[String], log: &Path) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Self::spawn_command(name, cmd, log)
    }

    /// Starts `cmd` (program and arguments set) with stdout and stderr appended to `log`.
    pub fn spawn_command(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        own_group_and_die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.into(),
            child,
            log: log.into(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last log lines from {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGTERM to the group, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        signal_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Components that depend on the ones started before them (a control plane, a node): checked
/// together, stopped newest first, also on drop.
#[derive(Debug, Default)]
pub struct Processes(Vec<ManagedProcess>);

impl Processes {
    pub fn push(&mut self, process: ManagedProcess) {
        self.0.push(process);
    }

    /// Fails, with its log's end, on the first that has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.0.iter_mut().try_for_each(ManagedProcess::check_alive)
    }

    /// SIGTERM to each, newest first, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.0.pop() {
            p.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The entries of `dir`, sorted (none if it cannot be read).
pub fn sorted_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// The last `n` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
