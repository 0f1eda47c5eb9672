//! Services Lab's end-to-end suite: `labctl` run as a user runs it, through its binary, with
//! a private state directory per test. The suite's tests live in `tests/`; this library holds
//! what they share: finding (and building) the binary, running it with bounded time, and
//! checking what a run left behind.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `labctl` binary of this workspace, built once per test process (a no-op when fresh).
pub fn labctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Test binaries live in target/<profile>/deps; the binary goes to target/<profile>.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // The same targets as `cargo test --workspace`, so features resolve as they did for
        // the workspace's test run and the build is a no-op there; `-p labctl` alone resolves
        // fewer features and rebuilds much of the dependency tree from scratch.
        build.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the labctl binary");
        assert!(status.success(), "cargo build for the labctl binary failed");
        profile_dir.join("labctl")
    })
}

/// A finished run of labctl.
#[derive(Debug)]
pub struct Run {
    /// Its exit code (`None` when killed for running too long).
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl Run {
    /// Both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit {:?} after {:.1?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A private place for labs: its own state directory and HOME, so nothing touches the user's
/// labs or kubeconfig.
pub struct Sandbox {
    /// The directory; removed when the sandbox is dropped.
    pub dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }
}

impl Sandbox {
    /// Runs `labctl args...`, killing it after `limit`.
    pub fn labctl(&self, args: &[&str], limit: Duration) -> Run {
        self.labctl_with(args, &[], limit)
    }

    /// Runs `labctl args...` with extra environment variables, killing it after `limit`.
    pub fn labctl_with(&self, args: &[&str], env: &[(&str, &OsStr)], limit: Duration) -> Run {
        self.run(args, env, None, &[], limit)
    }

    /// Runs `labctl args...` as user and group `uid` (the test runs as root), with the
    /// sandbox given to that user, killing it after `limit`.
    pub fn labctl_as(&self, uid: u32, args: &[&str], limit: Duration) -> Run {
        std::os::unix::fs::chown(self.dir.path(), Some(uid), Some(uid))
            .expect("giving the sandbox to the user");
        self.run(args, &[], Some(uid), &[], limit)
    }

    /// [`Sandbox::labctl_as`] in a chroot (a recursive bind of `/`, in a private mount
    /// namespace), where the kernel refuses to make a user namespace, as on machines that
    /// forbid unprivileged ones.
    pub fn labctl_as_without_user_namespaces(
        &self,
        uid: u32,
        args: &[&str],
        limit: Duration,
    ) -> Run {
        std::os::unix::fs::chown(self.dir.path(), Some(uid), Some(uid))
            .expect("giving the sandbox to the user");
        let root = self.dir.path().join("root");
        std::fs::create_dir_all(&root).expect("the chroot's mount point");
        let script = format!(
            "mount --rbind / {root} && exec chroot {root} setpriv --reuid={uid} --regid={uid} --clear-groups \"$@\"",
            root = root.display()
        );
        let wrap: Vec<String> = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
            .iter()
            .map(|a| a.to_string())
            .chain([script, "sh".into()])
            .collect();
        self.run(args, &[], None, &wrap, limit)
    }

    /// Runs labctl (as `user`, or through the command `wrap`, which ends with the arguments
    /// that precede labctl's path).
    fn run(
        &self,
        args: &[&str],
        env: &[(&str, &OsStr)],
        user: Option<u32>,
        wrap: &[String],
        limit: Duration,
    ) -> Run {
        // Building the binary (the first call) is not part of the run's time limit.
        let bin = labctl_bin();
        let started = Instant::now();
        let mut command = match wrap.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if let Some(uid) = user {
            // As root, std also drops the supplementary groups.
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env("LABCTL_STATE_DIR", self.dir.path())
            .env("HOME", self.dir.path())
            .env("RUST_BACKTRACE", "0")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting labctl");
        // Drain both pipes while waiting, so a chatty run cannot block on a full pipe.
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || read_all(stdout));
        let err = std::thread::spawn(move || read_all(stderr));
        let code = loop {
            if let Some(status) = child.try_wait().expect("waiting for labctl") {
                break status.code();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            code,
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
            elapsed: started.elapsed(),
        }
    }

    /// The state directory of lab `name`.
    pub fn lab_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops lab `name` and deletes its state (best effort, for cleanup after a failure).
    pub fn down(&self, name: &str) {
        let _ = self.labctl(
            &["down", "--name", name, "--purge"],
            Duration::from_secs(30),
        );
    }
}

fn read_all(mut r: impl std::io::Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Userspace-mode labs serve on loopback twins of the same addresses (10.244.1.2 at
/// 127.244.1.2), so two of them at once would clash: tests that run one hold this.
pub fn userspace_lab() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Network namespaces of lab `name` that exist now.
pub fn namespaces_of(name: &str) -> Vec<String> {
    let prefix = format!("slab-{name}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether this process may create network namespaces (root, as CI runs).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
