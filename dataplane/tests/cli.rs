//! The `dataplane` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dataplane(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(args)
        .output()
        .expect("run dataplane")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn render_prints_the_tutorials_rules() {
    let file = fixture("tutorial.yaml");
    let out = dataplane(&[
        "render",
        "-f",
        file.to_str().unwrap(),
        "--node-name",
        "lab-worker",
        "--node-ip",
        "172.18.0.3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cli_render_tutorial.iptables");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &stdout).unwrap();
    }
    assert_eq!(
        stdout,
        std::fs::read_to_string(&golden).unwrap(),
        "re-run with UPDATE_GOLDEN=1 to accept"
    );
    assert!(stdout.contains("-j KUBE-SVC-DZ6LTOHRG6HQWHYE"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        "dataplane: skipped 1 Deployment object(s): only Services and EndpointSlices make rules\n"
    );
}

#[test]
fn bad_input_names_the_file_and_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, protocol: ICMP}], clusterIP: 10.96.0.9}\n").unwrap();
    let out = dataplane(&["render", "-f", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        "dataplane: Service default/x: spec.ports[0].protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)"
    );

    let out = dataplane(&["render", "-f", "/nonexistent/objects.yaml"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("dataplane: reading /nonexistent/objects.yaml: "),
        "{stderr}"
    );
}
