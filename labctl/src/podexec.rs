//! Commands run in a Pod for `kubectl exec`. The lab's containers are wasm instances with no
//! filesystem of their own, so a command runs from the machine's filesystem, but where its
//! Pod is: in the Pod's network namespace and with the Pod's name as host name (kernel mode),
//! or on the host, where userspace mode serves Pods on loopback addresses.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;

use rustix::pty::OpenptFlags;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, Command};

/// Where a Pod's commands run, as its runtime says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecPlace {
    /// In the Pod's network namespace (pinned at this path), in a UTS namespace of the
    /// command's own named after the Pod.
    Namespace(PathBuf),
    /// On the host, as the lab's own process.
    Host,
}

/// A command to run in a Pod.
pub struct ExecSpec<'a> {
    /// The program and its arguments.
    pub command: &'a [String],
    /// The Pod's name: its host name, and `HOSTNAME` as a container runtime sets it.
    pub pod: &'a str,
    /// The container's own `env` (literal values).
    pub env: Vec<(String, String)>,
    /// Where it runs.
    pub place: &'a ExecPlace,
    /// Whether the client sends input.
    pub stdin: bool,
    /// Whether the command gets a terminal (`kubectl exec -t`): one pseudo-terminal for all
    /// three streams, as a container's TTY is.
    pub tty: bool,
}

/// A started command and its streams; `stderr` is `None` on a terminal, which carries both.
pub struct Started {
    /// The process.
    pub child: Child,
    /// The command's process group: it and what it started.
    pub group: ProcessGroup,
    /// Where the client's input goes.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The command's output (and its errors, on a terminal).
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// The command's error output.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The terminal, to be resized as the client's window is.
    pub terminal: Option<Terminal>,
}

/// The processes a command started, in a group of their own, killed at the latest when this
/// is dropped (the exec ending in any way, the lab stopping among them).
#[derive(Debug)]
pub struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    /// Kills every process left in the group (none left is fine).
    pub fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The controlling side of a command's pseudo-terminal.
pub struct Terminal(OwnedFd);

impl Terminal {
    /// Sets the terminal's size, which the command sees (and is signalled about).
    pub fn resize(&self, columns: u16, rows: u16) -> io::Result<()> {
        rustix::termios::tcsetwinsize(
            &self.0,
            rustix::termios::Winsize {
                ws_row: rows,
                ws_col: columns,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )?;
        Ok(())
    }
}

/// What a container's environment starts with: the image's `PATH`, and `HOME` for root.
const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];

/// The command's environment: nothing of the lab's own process, only what a container
/// runtime gives an exec'd command.
fn environment(spec: &ExecSpec<'_>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = BASE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("HOSTNAME".into(), spec.pod.into()));
    if spec.tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    for (k, v) in &spec.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Starts the command; an error says what failed (the program not found, the namespace
/// not entered, ...).
pub fn spawn(spec: &ExecSpec<'_>) -> io::Result<Started> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(environment(spec))
        .current_dir("/");
    let netns = match spec.place {
        ExecPlace::Namespace(path) => Some(File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "opening the Pod's network namespace {}: {e}",
                    path.display()
                ),
            )
        })?),
        ExecPlace::Host => None,
    };
    let hostname: OsString = spec.pod.into();
    let (terminal, tty) = if spec.tty {
        let (master, slave) = open_terminal()?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave.try_clone()?));
        (Some(master), Some(slave))
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        (None, None)
    };
    let pre_exec = move || -> io::Result<()> {
        // Only system calls here: this runs in the forked child before exec.
        if let Some(ns) = &netns {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            // SAFETY: a new UTS namespace for this single-threaded child only, so that
            // the Pod's name is its host name without touching the machine's.
            #[allow(unsafe_code)]
            unsafe {
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUTS)?;
            }
            rustix::system::sethostname(hostname.as_encoded_bytes())?;
        }
        // A session of its own: its process group is everything the command starts, which
        // ends with the exec. On a terminal, that is its controlling terminal, so that
        // shells do job control and ^C reaches the foreground command.
        rustix::process::setsid()?;
        if let Some(slave) = &tty {
            rustix::process::ioctl_tiocsctty(slave)?;
        }
        // The command goes with the lab: nothing is left running in a Pod's namespace.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        Ok(())
    };
    // SAFETY: the closure makes system calls only; it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(pre_exec);
    }
    let mut cmd = Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // The command has its copies of the terminal; ours would keep it open after it exits.
    drop(cmd);
    let group = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        .map(|pid| ProcessGroup(Some(pid)))
        .ok_or_else(|| io::Error::other("the command exited as it started"))?;
    match terminal {
        Some(master) => {
            let reader = tokio::fs::File::from_std(File::from(master.try_clone()?));
            let writer = tokio::fs::File::from_std(File::from(master.try_clone()?));
            Ok(Started {
                child,
                group,
                stdin: spec
                    .stdin
                    .then(|| Box::new(writer) as Box<dyn AsyncWrite + Send + Unpin>),
                stdout: Box::new(reader),
                stderr: None,
                terminal: Some(Terminal(master)),
            })
        }
        None => {
            let stdout = child.stdout.take().expect("stdout is piped");
            let stderr = child.stderr.take().expect("stderr is piped");
            let stdin = child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>);
            Ok(Started {
                child,
                group,
                stdin,
                stdout: Box::new(stdout),
                stderr: Some(Box::new(stderr)),
                terminal: None,
            })
        }
    }
}

/// A new pseudo-terminal: its controlling side and the command's side.
fn open_terminal() -> io::Result<(OwnedFd, File)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?;
    Ok((master, slave))
}
