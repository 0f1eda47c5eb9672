//! A lab started through the real `labctl` binary in a temporary state directory, and the
//! real kubectl pointed at it with a fresh discovery cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const KUBECTL: &str = "/usr/bin/kubectl";

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub name: String,
}

pub fn labctl(args: &[&str], state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(args)
        .env("LABCTL_STATE_DIR", state)
        .env("HOME", state)
        .env_remove("KUBECONFIG")
        .output()
        .expect("running labctl")
}

impl Lab {
    /// A lab of the API and controllers only (the API tests need no Pods that serve).
    pub fn start() -> Lab {
        Lab::start_named("lab", &["--network", "none"])
    }

    /// A lab named `name` created with extra `labctl up` flags. Kernel-mode labs that run at
    /// the same time need different names: their namespaces are named after them.
    pub fn start_named(name: &str, flags: &[&str]) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let lab = Lab {
            dir,
            name: name.to_string(),
        };
        let mut args = vec!["up", "--name", name];
        args.extend_from_slice(flags);
        let out = labctl(&args, lab.dir.path());
        assert!(
            out.status.success(),
            "labctl up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    pub fn up(&self) {
        let out = labctl(&["up", "--name", &self.name], self.dir.path());
        assert!(
            out.status.success(),
            "labctl up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state().join("kubeconfig")
    }

    pub fn pid(&self) -> i32 {
        std::fs::read_to_string(self.state().join("labctl.pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    /// Runs kubectl against the lab; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .kubectl_command(args)
            .output()
            .expect("running kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs labctl on this lab.
    pub fn labctl(&self, args: &[&str]) -> Output {
        self.labctl_command(args).output().expect("running labctl")
    }

    /// labctl on this lab as a command with its output captured, to start in the background.
    pub fn labctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_labctl"));
        c.arg(args[0])
            .args(["--name", &self.name])
            .args(&args[1..])
            .env("LABCTL_STATE_DIR", self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path());
        c
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    /// Repeats kubectl until `check` holds on its stdout, for at most `limit`.
    pub fn until(&self, args: &[&str], limit: Duration, check: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let (_, out, _) = self.kubectl(args);
            if check(&out) {
                return out;
            }
            assert!(
                started.elapsed() < limit,
                "kubectl {args:?} did not reach the expected state within {limit:?}; last output:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn client(&self) -> kube::Client {
        let text = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig");
        let config = kube::config::Kubeconfig::from_yaml(&text).expect("kubeconfig parses");
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }

    pub fn kill9(&self) {
        let pid = self.pid();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        let started = Instant::now();
        while Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z"))
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = labctl(&["down", "--name", &self.name, "--purge"], self.dir.path());
    }
}

pub fn kubectl_present() -> bool {
    Path::new(KUBECTL).exists()
}

/// Rows of a `kubectl get` table, split on runs of spaces.
pub fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}
