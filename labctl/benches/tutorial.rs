//! `labctl tutorial` end to end on a warm build, as a user runs it: the release binary, a
//! fresh lab each run, every step and check. Goal: under 10 s on a 2-core machine (a kind
//! cluster alone takes about a minute to create). Runs are bounded; the last line is one JSON
//! object of the figures.

use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 3;
const LIMIT: Duration = Duration::from_secs(120);
const GOAL_S: f64 = 10.0;

fn run_once(dataplane: &str, state: &std::path::Path) -> f64 {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(["tutorial", "--name", "bench-tut", "--dataplane", dataplane])
        .env("LABCTL_STATE_DIR", state)
        .env("HOME", state)
        .env("RUST_BACKTRACE", "0")
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting labctl tutorial");
    loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            assert!(
                status.success(),
                "labctl tutorial --dataplane {dataplane} failed"
            );
            return started.elapsed().as_secs_f64();
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("labctl tutorial took over {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = rustix::process::geteuid().is_root();
    let state = tempfile::tempdir().expect("a state directory");
    let mut figures = serde_json::Map::new();
    let modes: &[&str] = if root {
        &["iptables", "nftables", "userspace"]
    } else {
        &["userspace"]
    };
    for mode in modes {
        let times: Vec<f64> = (0..RUNS).map(|_| run_once(mode, state.path())).collect();
        let m = median(times.clone());
        println!(
            "labctl tutorial --dataplane {mode}: median {m:.2} s over {RUNS} runs ({})",
            times
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        figures.insert(
            format!("tutorial_{mode}_s"),
            serde_json::json!((m * 100.0).round() / 100.0),
        );
    }
    let worst = figures
        .values()
        .filter_map(|v| v.as_f64())
        .fold(0.0, f64::max);
    figures.insert("goal_s".into(), serde_json::json!(GOAL_S));
    figures.insert("goal_met".into(), serde_json::json!(worst < GOAL_S));
    println!("{}", serde_json::Value::Object(figures));
}
