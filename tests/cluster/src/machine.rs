//! A machine for a real node: its own network, mount and PID namespaces, as kind's node
//! containers have, joined to this host by a veth pair.
//!
//! Machine `k` (1..=254, the first free one, held with a lock file) is `198.18.k.2` on its
//! `eth0`; the host end of the pair is `lln<k>` with `198.18.k.1`; its pods get addresses
//! from `198.19.k.0/24` on a CNI bridge inside the machine, and the host routes that range
//! to the machine, so tests reach pods by their IPs. Both ranges are RFC 2544's benchmark
//! network: nothing real uses them, and nothing leaves this host (the machine's default
//! route points at the host, which forwards what comes in on a machine's veth to the other
//! machines only: forwarding is on for those interfaces alone, and an iptables rule drops
//! anything they send elsewhere).
//!
//! The machine's first process (its PID 1) is the pause binary. Every component started in
//! the machine (containerd, the kubelet, the containers themselves) lives in its PID
//! namespace, so when PID 1 dies (on [`Drop`], or with the test process through
//! `PR_SET_PDEATHSIG`) the kernel kills all of them, their mounts go with the mount
//! namespace and the veth pair with the network namespace: a crashed test leaves no
//! container, mount or interface behind.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::ManagedProcess;

/// Where the machines' lock files are (one per index in use).
const LOCK_DIR: &str = "/tmp/llamanet-machines";

/// One machine (see the module documentation).
#[derive(Debug)]
pub struct Machine {
    index: u8,
    /// `unshare ... -- pause`: its child is the machine's PID 1.
    holder: ManagedProcess,
    /// The machine's PID 1 as this host sees it.
    init: u32,
    _lock: File,
}

impl Machine {
    /// Creates the namespaces with `init` (a static pause binary) as PID 1, and the veth
    /// pair, addresses and routes. Needs root (`unshare`, `ip` and `nsenter` from util-linux
    /// and iproute2).
    pub fn start(init: &Path, dir: &Path) -> Result<Self> {
        if !init.is_file() {
            bail!(
                "{} is missing: run scripts/build-images.sh (it builds the pause binary)",
                init.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        let (index, lock) = claim_index()?;
        let host_if = format!("lln{index}");
        remove_cgroups(&cgroup_root(index), Duration::ZERO);
        create_cgroups(&cgroup_root(index))?;
        // A veth pair dies with its namespace; one left here belongs to nobody.
        let _ = run(Command::new("ip").args(["link", "del", &host_if]));
        let mut holder = ManagedProcess::spawn(
            "machine",
            Path::new("unshare"),
            &[
                "--net".into(),
                "--mount".into(),
                "--pid".into(),
                "--fork".into(),
                "--mount-proc".into(),
                "--kill-child".into(),
                // Mounts from the host still show inside; the machine's own stay inside.
                "--propagation".into(),
                "slave".into(),
                "--".into(),
                init.display().to_string(),
            ],
            &dir.join("machine.log"),
        )?;
        let init_pid = started_child(&mut holder, init, Duration::from_secs(10))?;
        let machine = Self {
            index,
            holder,
            init: init_pid,
            _lock: lock,
        };
        machine.wire(&host_if, dir)?;
        Ok(machine)
    }

    /// The mounts, the loopback, forwarding and the veth pair.
    fn wire(&self, host_if: &str, dir: &Path) -> Result<()> {
        let k = self.index;
        // The kubelet's volumes need mount propagation between it and containerd.
        self.run("mount", &["--make-rshared", "/"])?;
        // No name resolves inside (image pulls fail at once, and ask nobody).
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\n")?;
        self.run(
            "mount",
            &["--bind", &resolv.display().to_string(), "/etc/resolv.conf"],
        )?;
        self.run("ip", &["link", "set", "lo", "up"])?;
        self.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Pod traffic on the bridge goes through iptables (kube-proxy's Service rules).
        let _ = self.run("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"]);
        run(Command::new("ip").args([
            "link",
            "add",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.init.to_string(),
        ]))?;
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/24", self.host_address()),
            "dev",
            host_if,
        ]))?;
        run(Command::new("ip").args(["link", "set", host_if, "up"]))?;
        // The host forwards what arrives on this machine's veth (to other machines and their
        // pods, on their veths); nothing that arrives on its other interfaces.
        // Addresses of the range with no machine (one that stopped) lead nowhere, rather
        // than to the default route.
        run(Command::new("ip").args(["route", "replace", "unreachable", "198.18.0.0/15"]))?;
        let machines_only = ["FORWARD", "-i", "lln+", "!", "-o", "lln+", "-j", "DROP"];
        if run(Command::new("iptables").arg("-C").args(machines_only)).is_err() {
            run(Command::new("iptables").arg("-I").args(machines_only))?;
        }
        run(Command::new("sysctl").args(["-qw", &format!("net.ipv4.conf.{host_if}.forwarding=1")]))?;
        self.run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.address()),
                "dev",
                "eth0",
            ],
        )?;
        self.run("ip", &["link", "set", "eth0", "up"])?;
        self.run(
            "ip",
            &[
                "route",
                "add",
                "default",
                "via",
                &self.host_address().to_string(),
            ],
        )?;
        run(Command::new("ip").args([
            "route",
            "add",
            &format!("198.19.{k}.0/24"),
            "via",
            &self.address().to_string(),
        ]))?;
        Ok(())
    }

    /// The machine's number (the third octet of its addresses).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The machine's PID 1 as this host sees it.
    pub fn init_pid(&self) -> u32 {
        self.init
    }

    /// The machine's address on its `eth0`.
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, 2)
    }

    /// The host's end of the veth pair.
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, 1)
    }

    /// The cgroup (in every hierarchy) under which the machine's kubelet puts its pods: two
    /// clusters' kubelets on one host must not share `/kubepods`.
    pub fn cgroup_root(&self) -> String {
        cgroup_root(self.index)
    }

    /// The range the machine's pods get their addresses from.
    pub fn pod_cidr(&self) -> String {
        format!("198.19.{}.0/24", self.index)
    }

    /// `program` to be run inside the machine (all its namespaces).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.init))
            .args(["--mount", "--net", "--pid", "--"])
            .arg(program);
        cmd
    }

    /// Starts a long-running component inside the machine.
    pub fn spawn(
        &self,
        name: &str,
        bin: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<ManagedProcess> {
        let mut cmd = self.command(bin);
        cmd.args(args);
        ManagedProcess::spawn_command(name, cmd, log)
    }

    /// Runs `program args` inside the machine to completion; its stdout, or an error with
    /// its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run(&mut cmd)
    }

    /// A power cut: SIGKILL to the machine's PID 1, so the kernel kills everything in it at
    /// once. The rest ([`Machine::stop`]) happens when it is dropped.
    pub fn power_off(&self) {
        // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
        unsafe {
            libc::kill(self.init as libc::pid_t, libc::SIGKILL);
        }
    }

    /// Stops everything in the machine at once (as a power cut would), then removes the
    /// cgroups its kubelet made.
    pub fn stop(&mut self) {
        self.holder.stop(Duration::from_secs(2));
        remove_cgroups(&self.cgroup_root(), Duration::from_secs(5));
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn cgroup_root(index: u8) -> String {
    format!("/llamanet-machine-{index}")
}

/// Creates `root` in every cgroup v1 hierarchy: the kubelet puts its pods' cgroups under it
/// (`cgroupRoot`) and refuses to start when a hierarchy lacks it. A new cpuset cgroup has no
/// CPUs or memory nodes until it is given its parent's.
fn create_cgroups(root: &str) -> Result<()> {
    let name = root.trim_start_matches('/');
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let hierarchy = entry.path();
        // The v2 hierarchy of a hybrid mount holds no controllers.
        if entry.file_name() == "unified" || !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let dir = hierarchy.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("writing {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Removes `root` and the cgroups under it in every cgroup v1 hierarchy (and the v2 one),
/// deepest first, retrying for up to `patience` while their last processes are dying.
fn remove_cgroups(root: &str, patience: Duration) {
    fn under(dir: &Path, found: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    under(&entry.path(), found);
                }
            }
        }
        found.push(dir.to_path_buf());
    }
    let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let deadline = Instant::now() + patience;
    loop {
        let mut left = Vec::new();
        for hierarchy in hierarchies.iter().chain([&PathBuf::from("/sys/fs/cgroup")]) {
            let top = hierarchy.join(root.trim_start_matches('/'));
            if !top.is_dir() {
                continue;
            }
            let mut dirs = Vec::new();
            under(&top, &mut dirs);
            for dir in dirs {
                if std::fs::remove_dir(&dir).is_err() {
                    left.push(dir);
                }
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command to completion: its stdout, or an error naming it with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first machine index whose lock file this process could lock (held until dropped;
/// the kernel releases it when the process dies).
fn claim_index() -> Result<(u8, File)> {
    std::fs::create_dir_all(LOCK_DIR)?;
    for index in 1..=254u8 {
        let path = PathBuf::from(LOCK_DIR).join(format!("{index}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok((index, file));
        }
    }
    bail!("all 254 machine indexes under {LOCK_DIR} are in use")
}

/// The holder's (unshare's) forked child, once it runs `init`: from then on its namespaces
/// are complete (unshare mounts the machine's /proc before it execs).
fn started_child(holder: &mut ManagedProcess, init: &Path, timeout: Duration) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    let pid = holder.id();
    let children = format!("/proc/{pid}/task/{pid}/children");
    let init = init.canonicalize()?;
    loop {
        holder.check_alive()?;
        let child: Option<u32> = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|c| c.parse().ok()));
        if let Some(child) = child
            && std::fs::read_link(format!("/proc/{child}/exe")).is_ok_and(|exe| exe == init)
        {
            return Ok(child);
        }
        if Instant::now() > deadline {
            bail!("unshare ({pid}) started no machine init within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
