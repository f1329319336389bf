//! Starting one container as a local process.
//!
//! The process gets its own process group (stopping the container stops what
//! it forked), a private mount namespace with the pod's volumes bind-mounted at
//! their `mountPath`, the pod's working directory and user, and dies with the
//! node (`PR_SET_PDEATHSIG`). Everything that allocates is prepared before
//! `fork`; the pre-exec hook only makes system calls.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::volumes::Mount;

/// Everything needed to start a container's process.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub working_dir: Option<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Image binaries first, then the host's PATH.
    pub path: String,
    pub log: PathBuf,
}

/// Finds `argv[0]` on `path` (like `execvp`, but before forking so a missing
/// binary is a clear error instead of exit code 127).
pub fn resolve_executable(program: &str, path: &str) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(program.into());
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("executable {program:?} not found in PATH {path}"))
}

/// Starts the process. Output goes to the container's log file.
pub fn spawn(spec: &ProcessSpec) -> Result<tokio::process::Child> {
    let Some(program) = spec.argv.first() else {
        bail!("container has no command and its image no entrypoint");
    };
    let exe = resolve_executable(program, &spec.path)?;
    for m in &spec.mounts {
        prepare_mount_target(m)?;
    }
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;

    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg0(program)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }

    let mounts: Vec<(CString, CString, bool)> = spec
        .mounts
        .iter()
        .map(|m| {
            Ok((
                CString::new(m.source.as_os_str().as_bytes())?,
                CString::new(m.target.as_os_str().as_bytes())?,
                m.read_only,
            ))
        })
        .collect::<Result<_>>()?;
    let (uid, gid) = (spec.uid, spec.gid);
    let groups: Vec<libc::gid_t> = spec.groups.clone();

    // SAFETY: the closure only makes async-signal-safe system calls on memory
    // prepared before fork (the CStrings and the group list).
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::setpgid(0, 0))?;
            if !mounts.is_empty() {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Our mounts must not leak back into the host's namespace.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (src, dst, read_only) in &mounts {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    if *read_only {
                        check(libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            if uid != 0 || gid != 0 {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            // After setuid: a credential change clears the death signal.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// A bind mount needs something to mount onto: a folder for folders, an
/// empty file for files.
fn prepare_mount_target(m: &Mount) -> Result<()> {
    if m.target.exists() {
        return Ok(());
    }
    if m.source.is_dir() {
        std::fs::create_dir_all(&m.target)
    } else {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        File::create(&m.target).map(drop)
    }
    .with_context(|| format!("creating mount point {}", m.target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_on_path_or_reported() {
        assert_eq!(
            resolve_executable("sh", "/nonexistent:/bin:/usr/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_executable("./run.sh", "/bin").unwrap(),
            PathBuf::from("./run.sh")
        );
        let err = resolve_executable("no-such-binary", "/bin").unwrap_err();
        assert!(err.to_string().contains("no-such-binary"), "{err}");
    }

    #[tokio::test]
    async fn volumes_are_private_to_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(vol.join("hello"), "from the volume").unwrap();
        let target = dir.path().join("mnt");
        let spec = ProcessSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("cat {}/hello", target.display()),
            ],
            env: vec![],
            mounts: vec![Mount {
                source: vol.clone(),
                target: target.clone(),
                read_only: true,
            }],
            working_dir: None,
            uid: 0,
            gid: 0,
            groups: vec![],
            path: "/bin:/usr/bin".into(),
            log: dir.path().join("log"),
        };
        let status = spawn(&spec).unwrap().wait().await.unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "from the volume"
        );
        // The host sees an empty mount point: the bind mount lived only in
        // the container's namespace.
        assert!(target.is_dir());
        assert!(!target.join("hello").exists());
    }
}
