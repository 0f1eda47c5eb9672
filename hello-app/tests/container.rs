//! The container image: built offline from the static binary (`--target runtime` with the
//! `prebuilt` stage), started through testcontainers against podman's Docker-compatible socket
//! (or a Docker engine where there is one), and checked through 127.0.0.1.
//!
//! Without podman or docker it prints why it skips; under `CI` it fails instead, because
//! `.ci/run` installs podman.

mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{GenericImage, ImageExt};
use util::{assert_hello, get, local};

const MUSL: &str = "x86_64-unknown-linux-musl";

/// podman's settings that work on machines with low hard rlimits and hybrid cgroups.
const CONTAINERS_CONF: &str = "[containers]\n\
default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
[engine]\n\
cgroup_manager = \"cgroupfs\"\n\
runtime = \"runc\"\n";

fn skip(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "container test cannot run in CI: {reason} (.ci/run installs podman)"
    );
    // Straight to stderr: the test harness hides printed output of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED container image test: {reason}");
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `podman system service` on a private socket; stopped by PID on drop.
struct PodmanService {
    child: Child,
    _dir: tempfile::TempDir,
}

impl PodmanService {
    fn start(conf: &Path) -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("podman.sock");
        let url = format!("unix://{}", socket.display());
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &url])
            .env("CONTAINERS_CONF", conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start podman system service");
        let deadline = Instant::now() + util::PATIENCE;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "podman's socket did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
        (Self { child, _dir: dir }, url)
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn image_builds_offline_runs_non_root_and_answers_on_loopback() {
    let engine = if on_path("podman") {
        "podman"
    } else if on_path("docker") && std::env::var_os("DOCKER_HOST").is_some() {
        "docker"
    } else {
        return skip("neither podman nor a docker engine (DOCKER_HOST) is available");
    };
    let root = workspace_root();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("containers.conf");
    std::fs::write(&conf, CONTAINERS_CONF).unwrap();

    // The static binary the `prebuilt` stage copies: no base image is pulled.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--locked", "-p", "hello-app"])
            .args([
                "--no-default-features",
                "--features",
                "server",
                "--target",
                MUSL,
            ]),
        "building the static binary (needs `rustup target add x86_64-unknown-linux-musl`)",
    );
    let tag = format!("test-{}", std::process::id());
    let image = "localhost/hello-app";
    let _built = RemoveImage {
        engine,
        conf: conf.clone(),
        reference: format!("{image}:{tag}"),
    };
    run(
        Command::new(engine)
            .current_dir(&root)
            .env("CONTAINERS_CONF", &conf)
            .args([
                "build",
                "--build-arg",
                "BINARY_FROM=prebuilt",
                "--target",
                "runtime",
            ])
            .args(["-t", &format!("{image}:{tag}"), "."]),
        "building the image",
    );
    let inspect = Command::new(engine)
        .env("CONTAINERS_CONF", &conf)
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.ExposedPorts}}",
        ])
        .arg(format!("{image}:{tag}"))
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        config.starts_with("65532:65532 "),
        "runs as non-root: {config}"
    );
    assert!(config.contains("8080/tcp"), "exposes 8080: {config}");

    let _service = if engine == "podman" && std::env::var_os("DOCKER_HOST").is_none() {
        let (service, url) = PodmanService::start(&conf);
        // SAFETY: testcontainers reads the engine's address only from the environment. This
        // test binary runs this one test, and nothing else reads the environment meanwhile.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("DOCKER_HOST", url)
        };
        Some(service)
    } else {
        None
    };

    // An explicit mapping: podman's compatible API does not report ports published with
    // "publish all" in the form testcontainers reads.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let container = GenericImage::new(image, &tag)
        .with_exposed_port(8080.tcp())
        .with_wait_for(WaitFor::message_on_stderr("Server listening on port 8080"))
        .with_mapped_port(port, 8080.tcp())
        .with_startup_timeout(util::PATIENCE)
        .start()
        .expect("the container starts");
    let hostname = &container.id()[..12];
    assert_hello(&get(local(port), "/tutorial"), "1.0.0", hostname);
    let logs = String::from_utf8(container.stderr_to_vec().unwrap()).unwrap();
    assert!(logs.contains("Serving request: /tutorial"), "{logs}");
}

/// Removes the test's image, also when an assertion failed.
struct RemoveImage {
    engine: &'static str,
    conf: PathBuf,
    reference: String,
}

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new(self.engine)
            .env("CONTAINERS_CONF", &self.conf)
            .args(["rmi", "-f", &self.reference])
            .output();
        // The `prebuilt` stage leaves an unnamed image; only ours carry this label.
        let _ = Command::new(self.engine)
            .env("CONTAINERS_CONF", &self.conf)
            .args([
                "image",
                "prune",
                "-f",
                "--filter",
                "label=org.services-lab.stage=prebuilt",
            ])
            .output();
    }
}
