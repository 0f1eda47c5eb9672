//! The kind provider: a real Kubernetes in Docker containers, driven through the `kind` and
//! `docker` CLIs. Everything after the cluster exists (kubectl, checks, verdicts) is shared
//! with the embedded lab; only bringing it up, running commands on its nodes and taking it
//! down differ.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The image the tutorial's Deployment names; the lab builds hello-app under this tag and
/// loads it into the nodes, so no registry is needed.
pub const IMAGE: &str = "gcr.io/google-samples/hello-app:1.0";

/// kind's cluster configuration: a control plane and `workers` workers, the tutorial's pod
/// subnet, and kube-proxy in iptables mode (or none, for running another dataplane).
pub fn config(workers: usize, kube_proxy: bool) -> String {
    let mut yaml = String::from(
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking:\n  podSubnet: 10.244.0.0/16\n",
    );
    yaml.push_str(if kube_proxy {
        "  kubeProxyMode: iptables\n"
    } else {
        "  kubeProxyMode: none\n"
    });
    yaml.push_str("nodes:\n- role: control-plane\n");
    for _ in 0..workers {
        yaml.push_str("- role: worker\n");
    }
    yaml
}

/// Node container names, as kind names them: `<name>-worker`, `<name>-worker2`, ...
pub fn worker(name: &str, index: usize) -> String {
    match index {
        0 => format!("{name}-worker"),
        i => format!("{name}-worker{}", i + 1),
    }
}

/// Checks that kind can run here, saying what to install when it cannot.
pub fn preflight() -> Result<()> {
    for (program, install) in [
        (
            "docker",
            "install Docker Engine (https://docs.docker.com/engine/install/)",
        ),
        (
            "kind",
            "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)",
        ),
    ] {
        if crate::network::which(program).is_none() {
            bail!(
                "the kind provider needs `{program}`, which is not on PATH: {install}; or use the embedded lab (`--provider embedded`), which needs neither"
            );
        }
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running `docker info`")?;
    if !info.status.success() {
        bail!(
            "the kind provider needs a running Docker engine, and `docker info` failed: {} (start the engine, or use `--provider embedded`)",
            String::from_utf8_lossy(&info.stderr).trim()
        );
    }
    Ok(())
}

/// Creates cluster `name`, writing its kubeconfig to `kubeconfig`.
pub fn create(name: &str, workers: usize, kubeconfig: &Path) -> Result<()> {
    let dir = kubeconfig.parent().context("the kubeconfig's directory")?;
    let config_path = dir.join("kind.yaml");
    std::fs::write(&config_path, config(workers, true))
        .with_context(|| format!("writing {}", config_path.display()))?;
    run(Command::new("kind")
        .args([
            "create", "cluster", "--name", name, "--wait", "180s", "--config",
        ])
        .arg(&config_path)
        .arg("--kubeconfig")
        .arg(kubeconfig))
}

/// Builds hello-app's image from the workspace's Dockerfile under the tutorial's tag and loads
/// it into the cluster's nodes. Without the workspace (an installed labctl), the nodes pull
/// the original image instead; says which happened.
pub fn load_image(name: &str) -> Result<&'static str> {
    let root = workspace_root();
    if !root.join("Dockerfile").is_file() {
        return Ok(
            "the nodes pull gcr.io/google-samples/hello-app:1.0 (no Dockerfile here to build ours)",
        );
    }
    run(Command::new("docker")
        .args(["build", "-t", IMAGE])
        .arg(&root))?;
    run(Command::new("kind").args(["load", "docker-image", IMAGE, "--name", name]))?;
    Ok(
        "hello-app built from the Dockerfile and loaded into the nodes as gcr.io/google-samples/hello-app:1.0",
    )
}

/// Starts cloud-provider-kind (which gives LoadBalancer Services an address reachable from
/// the host) when it is on PATH; its PID, or why LoadBalancers will stay pending.
pub fn start_load_balancer_controller(log: &Path) -> Result<Result<u32, String>> {
    let Some(program) = crate::network::which("cloud-provider-kind") else {
        return Ok(Err("cloud-provider-kind is not on PATH, so LoadBalancer Services keep EXTERNAL-IP <pending> (install: go install sigs.k8s.io/cloud-provider-kind@latest)".into()));
    };
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(program)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting cloud-provider-kind")?;
    Ok(Ok(child.id()))
}

/// Deletes cluster `name`.
pub fn delete(name: &str) -> Result<()> {
    run(Command::new("kind").args(["delete", "cluster", "--name", name]))
}

/// The file that marks a lab directory as a kind cluster's (what `labctl down` reads).
const MARKER: &str = "kind-cluster";

/// Brings up kind cluster `dir.name` with `workers` workers: creates it (kubeconfig in the
/// lab's directory), loads hello-app, starts cloud-provider-kind when it can. Returns what a
/// user should know, one line each, and cloud-provider-kind's PID when it was started.
pub fn up(dir: &crate::lab::LabDir, workers: usize) -> Result<(Vec<String>, Option<u32>)> {
    preflight()?;
    std::fs::create_dir_all(&dir.root)
        .with_context(|| format!("creating {}", dir.root.display()))?;
    create(&dir.name, workers, &dir.kubeconfig_path())?;
    std::fs::write(dir.root.join(MARKER), &dir.name)
        .with_context(|| format!("writing {}", dir.root.join(MARKER).display()))?;
    let mut notes = vec![load_image(&dir.name)?.to_string()];
    let pid = match start_load_balancer_controller(&dir.root.join("cloud-provider-kind.log"))? {
        Ok(pid) => {
            std::fs::write(dir.root.join("cloud-provider-kind.pid"), pid.to_string())?;
            notes.push("cloud-provider-kind runs, so LoadBalancer Services get an address reachable from this host".into());
            Some(pid)
        }
        Err(why) => {
            notes.push(why);
            None
        }
    };
    Ok((notes, pid))
}

/// Whether lab `dir` is a kind cluster made by `up`.
pub fn is_kind_lab(dir: &crate::lab::LabDir) -> bool {
    dir.root.join(MARKER).is_file()
}

/// Stops cloud-provider-kind (when `up` started it) and deletes the cluster.
pub fn down(dir: &crate::lab::LabDir) -> Result<()> {
    let pid_file = dir.root.join("cloud-provider-kind.pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = std::fs::remove_file(&pid_file);
    }
    delete(&dir.name)?;
    let _ = std::fs::remove_file(dir.root.join(MARKER));
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cluster_config_matches_the_tutorial() {
        assert_eq!(
            super::config(2, true),
            "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking:\n  podSubnet: 10.244.0.0/16\n  kubeProxyMode: iptables\nnodes:\n- role: control-plane\n- role: worker\n- role: worker\n"
        );
        assert!(super::config(1, false).contains("kubeProxyMode: none\n"));
        assert_eq!(super::worker("lab", 0), "lab-worker");
        assert_eq!(super::worker("lab", 1), "lab-worker2");
    }
}
