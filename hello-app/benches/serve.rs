//! `cargo bench -p hello-app --bench serve`: native vs wasm-hosted hello-app on loopback.
//!
//! Each run starts the `hello-app` binary (native, or `wasm` with one Pod), warms it up, then
//! drives it for a fixed time with keep-alive connections from a load generator in this
//! process, recording every request's latency. Runs alternate native / wasm (/ Go) so that
//! drift in the machine hits all alike. Where the machine has two or more CPUs the server is pinned to
//! CPU 0 and the load generator to CPU 1, so each side has one core and the figures compare
//! per-core throughput. The server's CPU use during the window is reported too: if it is far
//! below 100%, the load generator, not the server, set the pace.
//!
//! Two reference points run in each round too, each left out with the reason printed when it
//! cannot be built:
//! - the Go original (`benches/go-original`, built here where `go` is installed): the app the
//!   tutorial runs, on the same core;
//! - the floor (`benches/floor-guest`, built here for `wasm32-wasip2`): a component that
//!   answers hello-app's bytes without looking at the request or logging, on the same host as
//!   hello-app's component. No component can do less and still answer, so its rate is the
//!   most the wasm host gives any component on this machine.
//!
//! Environment: `SERVE_BENCH_SECS` (measured seconds per run, default 4), `SERVE_BENCH_ROUNDS`
//! (default 3), `SERVE_BENCH_CONNS` (default 32). The last line is one JSON object.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Native,
    Wasm,
    /// The Go original.
    Go,
    /// The floor component on the wasm host.
    Floor,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Wasm => "wasm",
            Kind::Go => "go",
            Kind::Floor => "floor",
        }
    }
}

/// Builds the Go original into the target directory, or says why it cannot.
fn build_go_original() -> Result<std::path::PathBuf, String> {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/go-original");
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hello-app-go");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(source)
        // Never fetch a toolchain: the bench uses the machine's Go or none.
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(|e| format!("`go` did not run ({e}); `apt-get install golang-go` adds it"))?;
    if !built.status.success() {
        return Err(format!(
            "`go build` in {source} failed: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Ok(out)
}

/// Builds the floor component into the target directory, or says why it cannot.
fn build_floor_guest() -> Result<std::path::PathBuf, String> {
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/floor-guest/Cargo.toml"
    );
    // Next to the hello-app guest's own target directory (see build.rs), out of the bench's
    // temporary directory so that a rebuild is incremental.
    let target_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| "target".into(), |t| t.join("wasm-floor"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    // Flags meant for the host build (a bench's `-C target-cpu=native`, a wrapper) must not
    // reach the wasm32 one, as in build.rs.
    for key in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        build.env_remove(key);
    }
    let built = build
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .map_err(|e| format!("cargo did not run: {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "building {manifest} failed (`rustup target add wasm32-wasip2` adds the target): {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Ok(target_dir.join("wasm32-wasip2/release/hello_app_floor_guest.wasm"))
}

/// What the reference points run from; `Err` says why one is left out.
struct References {
    go: Result<std::path::PathBuf, String>,
    floor: Result<std::path::PathBuf, String>,
}

struct RunResult {
    rps: f64,
    /// Latency percentiles in ms.
    p50: f64,
    p99: f64,
    server_cpu: f64,
    errors: u64,
}

/// Which load generator drives the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadGen {
    /// `wrk`, when installed: the usual tool, and cheaper per request than ours, so the
    /// server rather than the generator sets the pace.
    Wrk,
    /// The built-in generator (tokio, one thread).
    Builtin,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this target without it,
    // and a test run must not start a minute of load.
    if !std::env::args().any(|a| a == "--bench") {
        println!("serve bench: run it with `cargo bench -p hello-app --bench serve`");
        return;
    }
    let secs: u64 = env_or("SERVE_BENCH_SECS", 4);
    let rounds: usize = env_or("SERVE_BENCH_ROUNDS", 3);
    let conns: usize = env_or("SERVE_BENCH_CONNS", 32);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cpus >= 2 && Command::new("taskset").arg("-V").output().is_ok();
    let loadgen = if Command::new("wrk").arg("-v").output().is_ok() {
        LoadGen::Wrk
    } else {
        LoadGen::Builtin
    };
    let refs = References {
        go: build_go_original(),
        floor: build_floor_guest(),
    };
    let mut kinds = vec![Kind::Native, Kind::Wasm];
    match &refs.go {
        Ok(_) => kinds.push(Kind::Go),
        Err(why) => println!("serve bench: the Go original is left out: {why}"),
    }
    match &refs.floor {
        Ok(_) => kinds.push(Kind::Floor),
        Err(why) => println!("serve bench: the floor component is left out: {why}"),
    }
    println!(
        "serve bench: {rounds} rounds x ({}), {conns} keep-alive connections, {secs} s \
         measured after 1 s warm-up; load from {}; {}",
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        match loadgen {
            LoadGen::Wrk => "wrk -t1",
            LoadGen::Builtin =>
                "the built-in generator (install wrk for figures the generator does not cap)",
        },
        if pinned {
            "server on CPU 0, load generator on CPU 1"
        } else {
            "unpinned (needs 2 CPUs and taskset)"
        }
    );

    let mut runs: Vec<(Kind, RunResult)> = Vec::new();
    for round in 1..=rounds {
        for &kind in &kinds {
            let result = run_once(
                kind,
                &refs,
                loadgen,
                conns,
                Duration::from_secs(secs),
                pinned,
            );
            println!(
                "round {round} {:<6} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  server CPU {:>4.0}%  errors {}",
                kind.name(),
                result.rps,
                result.p50,
                result.p99,
                result.server_cpu * 100.0,
                result.errors,
            );
            runs.push((kind, result));
        }
    }

    let mean = |kind: Kind, field: fn(&RunResult) -> f64| {
        let values: Vec<f64> = runs
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| field(r))
            .collect();
        values.iter().sum::<f64>() / values.len() as f64
    };
    let native_rps = mean(Kind::Native, |r| r.rps);
    let wasm_rps = mean(Kind::Wasm, |r| r.rps);
    let ratio = wasm_rps / native_rps;
    let wasm_p99 = mean(Kind::Wasm, |r| r.p99);
    let errors: u64 = runs.iter().map(|(_, r)| r.errors).sum();
    println!(
        "mean: native {native_rps:.0} req/s, wasm {wasm_rps:.0} req/s, wasm/native {ratio:.3} \
         (goal >= 0.7); wasm p99 {wasm_p99:.3} ms (goal < 2 ms)"
    );
    let figures = |kind: Kind| {
        (
            mean(kind, |r| r.rps),
            mean(kind, |r| r.p99),
            mean(kind, |r| r.server_cpu),
        )
    };
    let go_json = reference_json(
        "go",
        "the Go original",
        refs.go.is_ok().then(|| figures(Kind::Go)),
        native_rps,
        wasm_rps,
    );
    let floor_json = reference_json(
        "floor",
        "the floor component",
        refs.floor.is_ok().then(|| figures(Kind::Floor)),
        native_rps,
        wasm_rps,
    );
    println!(
        "{{\"native_rps\":{native_rps:.0},\"wasm_rps\":{wasm_rps:.0},\"wasm_native_ratio\":{ratio:.3},\
         \"native_p50_ms\":{:.3},\"native_p99_ms\":{:.3},\"wasm_p50_ms\":{:.3},\"wasm_p99_ms\":{wasm_p99:.3},\
         \"native_server_cpu\":{:.2},\"wasm_server_cpu\":{:.2},{go_json},{floor_json},\"errors\":{errors},\
         \"load_generator\":\"{}\",\"connections\":{conns},\"seconds_per_run\":{secs},\
         \"rounds\":{rounds},\"pinned\":{pinned}}}",
        mean(Kind::Native, |r| r.p50),
        mean(Kind::Native, |r| r.p99),
        mean(Kind::Wasm, |r| r.p50),
        mean(Kind::Native, |r| r.server_cpu),
        mean(Kind::Wasm, |r| r.server_cpu),
        match loadgen {
            LoadGen::Wrk => "wrk",
            LoadGen::Builtin => "builtin",
        },
    );
}

/// Prints a reference point's figures (mean req/s, p99 ms, server CPU) against native and
/// wasm, and returns them as JSON fields named after it: `null` when it was left out.
fn reference_json(
    name: &str,
    label: &str,
    figures: Option<(f64, f64, f64)>,
    native_rps: f64,
    wasm_rps: f64,
) -> String {
    let Some((rps, p99, cpu)) = figures else {
        return format!(
            "\"{name}_rps\":null,\"{name}_p99_ms\":null,\"{name}_native_ratio\":null,\
             \"wasm_{name}_ratio\":null,\"{name}_server_cpu\":null"
        );
    };
    let (vs_native, wasm_vs) = (rps / native_rps, wasm_rps / rps);
    println!(
        "{label}: {rps:.0} req/s, p99 {p99:.3} ms; {name}/native {vs_native:.3}, \
         wasm/{name} {wasm_vs:.3}"
    );
    format!(
        "\"{name}_rps\":{rps:.0},\"{name}_p99_ms\":{p99:.3},\"{name}_native_ratio\":{vs_native:.3},\
         \"wasm_{name}_ratio\":{wasm_vs:.3},\"{name}_server_cpu\":{cpu:.2}"
    )
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// A server process, stopped by PID when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(kind: Kind, refs: &References, pinned: bool) -> Server {
    let bin = match (kind, &refs.go) {
        (Kind::Go, Ok(go)) => go.as_os_str(),
        (Kind::Go, Err(_)) => unreachable!("the Go original runs only once built"),
        _ => std::ffi::OsStr::new(env!("CARGO_BIN_EXE_hello-app")),
    };
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache");
    match kind {
        Kind::Native => {
            cmd.args(["--bind", "127.0.0.1", "--hostname", "hello-world-bench"])
                .env("PORT", "0");
        }
        Kind::Wasm | Kind::Floor => {
            cmd.args([
                "wasm",
                "--pod",
                "hello-world-bench=127.0.0.1:0",
                "--cache-dir",
            ])
            .arg(cache);
            if kind == Kind::Floor {
                let floor = refs.floor.as_ref().expect("the floor runs only once built");
                cmd.arg("--component").arg(floor);
            }
        }
        // One OS thread runs Go code, as the others serve from a current-thread runtime.
        Kind::Go => {
            cmd.env("PORT", "0").env("GOMAXPROCS", "1");
        }
    }
    // All servers but the floor log a line per request, as the original does. The lines go to a file: a
    // pipe would need a reader, whose CPU time would land on one side of the comparison.
    // RUST_BACKTRACE would make wasmtime capture a backtrace whenever it builds an error,
    // which a server in a Pod does not do.
    let log_path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("serve-bench-{}.log", kind.name()));
    let log = std::fs::File::create(&log_path).expect("create the server log");
    cmd.env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting the {} server: {e}", kind.name()));
    // Held from here, so that a server that never says its port is stopped all the same.
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(port) = text.lines().find_map(listening_port) {
            break port;
        }
        assert!(
            Instant::now() < deadline,
            "the server printed no port: {text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    server.addr.set_port(port);
    server
}

fn listening_port(line: &str) -> Option<u16> {
    let (_, port) = line.split_once("Server listening on port ")?;
    port.parse().ok()
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn run_once(
    kind: Kind,
    refs: &References,
    loadgen: LoadGen,
    conns: usize,
    measure: Duration,
    pinned: bool,
) -> RunResult {
    let server = start(kind, refs, pinned);
    let pid = server.child.id();
    let result = match loadgen {
        LoadGen::Wrk => {
            wrk(server.addr, conns, Duration::from_secs(1), pinned);
            let cpu_before = cpu_seconds(pid);
            let started = Instant::now();
            let out = wrk(server.addr, conns, measure, pinned);
            let cpu = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
            parse_wrk(&out, cpu)
        }
        LoadGen::Builtin => builtin(server.addr, pid, conns, measure, pinned),
    };
    drop(server);
    result
}

/// Runs `wrk` (bounded by `time`) and returns its report.
fn wrk(addr: SocketAddr, conns: usize, time: Duration, pinned: bool) -> String {
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    let out = cmd
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{}s", time.as_secs()),
        ])
        .args(["--latency", "--timeout", "2s", &format!("http://{addr}/")])
        .output()
        .expect("run wrk");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parse_wrk(report: &str, server_cpu: f64) -> RunResult {
    let field = |prefix: &str| -> Option<&str> {
        report
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let latency_ms = |prefix: &str| -> f64 {
        let v = field(prefix).unwrap_or_else(|| panic!("wrk printed no {prefix}: {report}"));
        if let Some(us) = v.strip_suffix("us") {
            us.parse::<f64>().unwrap() / 1000.0
        } else if let Some(ms) = v.strip_suffix("ms") {
            ms.parse().unwrap()
        } else if let Some(s) = v.strip_suffix('s') {
            s.parse::<f64>().unwrap() * 1000.0
        } else {
            panic!("unexpected wrk latency {v:?}")
        }
    };
    let errors = field("Non-2xx or 3xx responses:").map_or(0, |v| v.parse().unwrap_or(0))
        + field("Socket errors:").map_or(0, |v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    RunResult {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("wrk printed no rate: {report}")),
        p50: latency_ms("50%"),
        p99: latency_ms("99%"),
        server_cpu,
        errors,
    }
}

fn builtin(addr: SocketAddr, pid: u32, conns: usize, measure: Duration, pinned: bool) -> RunResult {
    std::thread::spawn(move || {
        if pinned {
            pin_current_thread_to_cpu1();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            drive(addr, conns, Duration::from_secs(1), None).await;
            let cpu_before = cpu_seconds(pid);
            let started = Instant::now();
            let (count, hist, errors) = drive(addr, conns, measure, Some(())).await;
            let elapsed = started.elapsed().as_secs_f64();
            RunResult {
                rps: count as f64 / elapsed,
                p50: ms(hist.value_at_quantile(0.50)),
                p99: ms(hist.value_at_quantile(0.99)),
                server_cpu: (cpu_seconds(pid) - cpu_before) / elapsed,
                errors,
            }
        })
    })
    .join()
    .expect("load generator")
}

fn pin_current_thread_to_cpu1() {
    // taskset on our own thread id: the load generator's thread only.
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    let _ = Command::new("taskset")
        .args(["-p", "-c", "1", &tid.to_string()])
        .stdout(Stdio::null())
        .status();
}

/// Keeps `conns` connections busy for `time`; returns completed requests, their latencies (µs)
/// when `record` is set, and errors.
async fn drive(
    addr: SocketAddr,
    conns: usize,
    time: Duration,
    record: Option<()>,
) -> (u64, Histogram<u64>, u64) {
    let deadline = tokio::time::Instant::now() + time;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut done = 0u64;
            let mut errors = 0u64;
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return (0, hist, 1);
            };
            let _ = stream.set_nodelay(true);
            let mut buf = vec![0u8; 4096];
            while tokio::time::Instant::now() < deadline {
                let sent = Instant::now();
                if stream.write_all(REQUEST).await.is_err() {
                    errors += 1;
                    break;
                }
                match read_one(&mut stream, &mut buf).await {
                    Some(200) => {
                        done += 1;
                        if record.is_some() {
                            let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                        }
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            (done, hist, errors)
        });
    }
    let mut total = 0;
    let mut errors = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    while let Some(joined) = tasks.join_next().await {
        let (n, h, e) = joined.expect("connection task");
        total += n;
        errors += e;
        hist.add(&h).unwrap();
    }
    (total, hist, errors)
}

/// Reads one response (head and Content-Length body) and returns its status.
async fn read_one(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Option<u16> {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(&buf[..filled]).ok()? {
            let length: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())?;
            let status = resp.code?;
            while filled < head + length {
                let n = stream.read(&mut buf[filled..]).await.ok()?;
                if n == 0 {
                    return None;
                }
                filled += n;
            }
            return Some(status);
        }
        if filled == buf.len() {
            return None;
        }
    }
}
