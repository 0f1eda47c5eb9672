//! Commands run in a Pod for `kubectl exec`. The lab's containers are wasm instances with no
//! filesystem of their own, so a command runs from the machine's filesystem, but where its
//! Pod is: in the Pod's network namespace and with the Pod's name as host name (kernel mode),
//! or on the host, where userspace mode serves Pods on loopback addresses.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};

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
    /// The Pod's uid: its commands end when it stops ([`end_pod_sessions`]).
    pub pod_uid: &'a str,
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
    /// The command's session: it and everything it started.
    pub session: Session,
    /// Where the client's input goes.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The command's output (and its errors, on a terminal).
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// The command's error output.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The terminal, to be resized as the client's window is.
    pub terminal: Option<Terminal>,
}

/// The processes a command started: its session, which job control's process groups stay
/// in. Killed at the latest when this is dropped (the exec ending in any way, the lab
/// stopping among them), or when its Pod stops.
#[derive(Debug)]
pub struct Session {
    id: Option<i32>,
    pod_uid: String,
}

impl Session {
    /// Kills every process left in the session (none left is fine).
    pub fn kill(&mut self) {
        let Some(id) = self.id.take() else { return };
        let registered = {
            let mut sessions = sessions().lock().unwrap_or_else(|e| e.into_inner());
            let ids = sessions.get_mut(&self.pod_uid);
            let found = ids.as_ref().is_some_and(|ids| ids.contains(&id));
            if let Some(ids) = ids {
                ids.retain(|s| *s != id);
                if ids.is_empty() {
                    sessions.remove(&self.pod_uid);
                }
            }
            found
        };
        // A session no longer registered was ended with its Pod ([`end_pod_sessions`]).
        if registered {
            kill_session(id);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sessions of commands running in each Pod, by Pod uid.
fn sessions() -> &'static Mutex<HashMap<String, Vec<i32>>> {
    static SESSIONS: OnceLock<Mutex<HashMap<String, Vec<i32>>>> = OnceLock::new();
    SESSIONS.get_or_init(Mutex::default)
}

/// Ends every command running in a Pod, as a container's processes end with it.
pub fn end_pod_sessions(pod_uid: &str) {
    let ids = sessions()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(pod_uid)
        .unwrap_or_default();
    for id in ids {
        kill_session(id);
    }
}

/// Kills every process of session `id`, found by the session field of `/proc/<pid>/stat`.
fn kill_session(id: i32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if session_of(&stat) == Some(id)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The session id in a `/proc/<pid>/stat` line: the fourth field after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
fn session_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(3)?.parse().ok()
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

/// A container image's `PATH`.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A Pod's host name, as the kubelet makes it: at most 63 characters, without a trailing
/// `-` or `.` once cut.
pub fn host_name(pod: &str) -> &str {
    if pod.len() <= 63 {
        return pod;
    }
    pod[..63].trim_end_matches(['-', '.'])
}

/// The command's environment: nothing of the lab's own process, only what a container
/// runtime gives an exec'd command (`HOME` is the lab user's own when it is not root).
fn environment(spec: &ExecSpec<'_>) -> Vec<(String, String)> {
    let home = if rustix::process::geteuid().is_root() {
        "/root".to_string()
    } else {
        std::env::var("HOME").unwrap_or_else(|_| "/".into())
    };
    let mut env = vec![
        ("PATH".to_string(), PATH.to_string()),
        ("HOME".to_string(), home),
        ("HOSTNAME".to_string(), host_name(spec.pod).to_string()),
    ];
    if spec.tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    for (k, v) in &spec.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Why a command did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program is not on this machine (as a container runtime says it of an image).
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    /// The program is there but could not be run.
    #[error("exec: {program:?}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// What running it gave.
        source: io::Error,
    },
    /// The command's place in the Pod could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: String,
        /// What that gave.
        source: io::Error,
    },
}

/// Where `program` is, looked up on `path` as a shell or runc does; a name with a `/` is
/// taken as it is, relative to the command's working directory (the root).
fn find_program(program: &str, path: &str) -> Result<PathBuf, SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |m: &std::fs::Metadata| m.is_file() && m.permissions().mode() & 0o111 != 0;
    if program.contains('/') {
        let p = std::path::Path::new("/").join(program);
        return match std::fs::metadata(&p) {
            Ok(m) if runnable(&m) => Ok(p),
            Ok(_) => Err(SpawnError::Exec {
                program: program.to_string(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            }),
            Err(source) => Err(SpawnError::Exec {
                program: program.to_string(),
                source,
            }),
        };
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| runnable(&m)))
        .ok_or_else(|| SpawnError::NotFound(program.to_string()))
}

/// Starts the command; an error says what failed (the program not found, the namespace
/// not entered, ...).
pub fn spawn(spec: &ExecSpec<'_>) -> Result<Started, SpawnError> {
    let setup = |what: &str| {
        let what = what.to_string();
        move |source: io::Error| SpawnError::Setup { what, source }
    };
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| SpawnError::Setup {
            what: "reading the command".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no command"),
        })?;
    let env = environment(spec);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(PATH, |(_, v)| v.as_str());
    // Looked up here, so that a failure of the spawn itself is known not to be this one.
    let found = find_program(program, path)?;
    let mut cmd = std::process::Command::new(found);
    cmd.arg0(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    let netns = match spec.place {
        ExecPlace::Namespace(path) => Some(File::open(path).map_err(setup(&format!(
            "opening the Pod's network namespace {}",
            path.display()
        )))?),
        ExecPlace::Host => None,
    };
    let hostname: OsString = host_name(spec.pod).into();
    let (terminal, tty) = if spec.tty {
        let (master, slave) = open_terminal().map_err(setup("opening a terminal"))?;
        let end = || slave.try_clone().map_err(setup("opening a terminal"));
        cmd.stdin(Stdio::from(end()?))
            .stdout(Stdio::from(end()?))
            .stderr(Stdio::from(end()?));
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
        // A session of its own: everything the command starts, which ends with the exec.
        // On a terminal, that is its controlling terminal, so that shells do job control
        // and ^C reaches the foreground command.
        rustix::process::setsid()?;
        if let Some(slave) = &tty {
            rustix::process::ioctl_tiocsctty(slave)?;
        }
        // The command goes with the lab, should the lab be killed (what the command started
        // is ended by [`Session`]).
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
    // The program was found, so what fails here is running it or, rarely, the set-up in
    // the child before that (entering the namespace, naming the host), reported alike.
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        program: program.clone(),
        source,
    })?;
    // The command has its copies of the terminal; ours would keep it open after it exits.
    drop(cmd);
    // The command leads its own session (its pid is the session's id).
    let id = child.id().map(|id| id as i32);
    if let Some(id) = id {
        sessions()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(spec.pod_uid.to_string())
            .or_default()
            .push(id);
    }
    let session = Session {
        id,
        pod_uid: spec.pod_uid.to_string(),
    };
    match terminal {
        Some(master) => {
            let end = || -> Result<tokio::fs::File, SpawnError> {
                let fd = master.try_clone().map_err(setup("opening a terminal"))?;
                Ok(tokio::fs::File::from_std(File::from(fd)))
            };
            let (reader, writer) = (end()?, end()?);
            Ok(Started {
                child,
                session,
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
                session,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) prog) S 1 4240 4241 0 -1 4194560 100 0";
        assert_eq!(session_of(stat), Some(4241));
        assert_eq!(session_of("garbage"), None);
    }

    #[test]
    fn long_pod_names_are_cut_to_a_host_name() {
        assert_eq!(
            host_name("hello-world-7f785867c-x654g"),
            "hello-world-7f785867c-x654g"
        );
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(host_name(&long), "a".repeat(62));
    }

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(find_program("sh", PATH).unwrap().ends_with("sh"));
        assert_eq!(
            find_program("/bin/sh", "").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            find_program("bin/sh", "").unwrap(),
            PathBuf::from("/bin/sh")
        );
        let missing = find_program("no-such-program-here", PATH).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "exec: \"no-such-program-here\": executable file not found in $PATH"
        );
        // Named by path, a file is missing or not executable, as runc says.
        let gone = find_program("/no/such", PATH).unwrap_err().to_string();
        assert!(
            gone.starts_with("exec: \"/no/such\": No such file or directory"),
            "{gone}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, "not a program").unwrap();
        let name = file.to_str().unwrap();
        let plain = find_program(name, PATH).unwrap_err().to_string();
        assert!(
            plain.starts_with(&format!("exec: {name:?}: permission denied")),
            "{plain}"
        );
    }

    #[test]
    fn the_containers_env_overrides_the_base() {
        let spec = ExecSpec {
            command: &[],
            pod: "p",
            pod_uid: "u",
            env: vec![("PATH".into(), "/opt/bin".into()), ("A".into(), "1".into())],
            place: &ExecPlace::Host,
            stdin: false,
            tty: true,
        };
        let env = environment(&spec);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/opt/bin"));
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("HOSTNAME"), Some("p"));
        assert_eq!(get("TERM"), Some("xterm"));
        assert_eq!(env.iter().filter(|(n, _)| n == "PATH").count(), 1);
    }
}
