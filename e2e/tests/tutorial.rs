//! `labctl tutorial` as a user runs it: the binary, its exit code and the shape of its output,
//! in each dataplane mode, plus `--step`/`--keep` with `labctl verify` on the kept lab, and a
//! failure that is explained.

use std::time::Duration;

use e2e::{Run, Sandbox, is_root, namespaces_of};

const LIMIT: Duration = Duration::from_secs(120);

/// Every step ran, in order, every check passed, and the summary says so.
fn assert_passed(run: &Run, steps: usize) {
    assert_eq!(run.code, Some(0), "{}", run.all());
    let mut at = 0;
    for n in 1..=steps {
        let heading = format!("[{n}/6] ");
        let found = run.stdout[at..]
            .find(&heading)
            .unwrap_or_else(|| panic!("step {n} missing or out of order\n{}", run.all()));
        at += found;
    }
    assert!(!run.stdout.contains("FAIL"), "{}", run.all());
    assert!(run.stdout.contains("\nTutorial passed: "), "{}", run.all());
    // Not a terminal: plain text, no colour codes.
    assert!(!run.stdout.contains('\u{1b}'), "{}", run.all());
}

/// The commands a user types appear verbatim, with their real output after them.
fn assert_tutorial_commands(run: &Run) {
    for command in [
        "$ kubectl apply -f deployment.yaml\ndeployment.apps/hello-world created\n",
        "$ kubectl scale deployment hello-world --replicas=2\ndeployment.apps/hello-world scaled\n",
        "$ kubectl expose deployment hello-world --port=80 --target-port=8080\nservice/hello-world exposed\n",
        "$ kubectl expose deployment hello-world --target-port=8080 --type=NodePort\nservice/hello-world exposed\n",
        "$ kubectl expose deployment hello-world --port=80 --target-port=8080 --type=LoadBalancer\nservice/hello-world exposed\n",
        "$ kubectl get svc\nNAME          TYPE        CLUSTER-IP",
        "$ kubectl get service\nNAME          TYPE           CLUSTER-IP",
    ] {
        assert!(
            run.stdout.contains(command),
            "missing {command:?}\n{}",
            run.all()
        );
    }
    let answers = run
        .stdout
        .matches("Hello, world!\nVersion: 1.0.0\nHostname: hello-world-")
        .count();
    assert!(answers >= 4, "{answers} curl answers\n{}", run.all());
}

/// Runs the tutorial in kernel mode with `dataplane` as lab `name`, checks it passed with the
/// given listings in its output, and that nothing is left behind.
fn kernel_tutorial(name: &str, dataplane: &str, listings: &[String]) -> Option<Run> {
    if !is_root() {
        eprintln!("skipped: kernel mode needs root to create network namespaces (CI runs as root)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        return None;
    }
    let sandbox = Sandbox::default();
    let run = sandbox.labctl(
        &["tutorial", "--name", name, "--dataplane", dataplane],
        LIMIT,
    );
    sandbox.down(name);
    assert_passed(&run, 6);
    assert_tutorial_commands(&run);
    for listing in listings {
        assert!(
            run.stdout.contains(listing.as_str()),
            "missing {listing:?}\n{}",
            run.all()
        );
    }
    assert!(
        run.stdout
            .contains("PASS load is spread over every Ready Pod"),
        "{}",
        run.all()
    );
    assert!(!sandbox.lab_dir(name).exists());
    assert!(namespaces_of(name).is_empty(), "{:?}", namespaces_of(name));
    eprintln!(
        "kernel-mode tutorial with {dataplane} took {:.1?}",
        run.elapsed
    );
    Some(run)
}

#[test]
fn the_tutorial_passes_in_kernel_mode_with_iptables() {
    // The deep dive lists the kernel's rules on a node and checks them.
    let mut listings: Vec<String> = [
        "KUBE-SERVICES",
        "KUBE-SVC-DZ6LTOHRG6HQWHYE",
        "KUBE-NODEPORTS",
        "KUBE-EXT-DZ6LTOHRG6HQWHYE",
    ]
    .iter()
    .map(|chain| format!("e2e-ipt-worker$ iptables -t nat -L {chain} -n | column -t\n"))
    .collect();
    listings.extend(
        [
            "client$ curl http://172.18.255.200/\n",
            "PASS one KUBE-SEP chain per Ready Pod",
            "PASS the first endpoint is chosen with probability 0.5",
        ]
        .map(String::from),
    );
    kernel_tutorial("e2e-ipt", "iptables", &listings);
}

#[test]
fn the_tutorial_passes_in_kernel_mode_with_nftables() {
    let mut listings: Vec<String> = [
        "map ip services-lab service-ips",
        "chain ip services-lab svc-DZ6LTOHRG6HQWHYE",
        "map ip services-lab tcp-endpoints-0",
        "map ip services-lab service-nodeports",
        "chain ip services-lab ext-DZ6LTOHRG6HQWHYE",
    ]
    .iter()
    .map(|what| format!("e2e-nft-worker$ nft list {what}\n"))
    .collect();
    listings
        .push("PASS svc-DZ6LTOHRG6HQWHYE picks one of the 2 Ready Pods at random (numgen)".into());
    if let Some(run) = kernel_tutorial("e2e-nft", "nftables", &listings) {
        assert!(!run.stdout.contains("iptables -t nat"), "{}", run.all());
    }
}

/// Whether the test must skip because it needs root (it prints why; CI runs as root, so
/// under `CI` it fails instead).
fn without_root(needs: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: {needs}, which needs root (CI runs as root)");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test as root"
    );
    true
}

/// The run fell back to userspace mode and said `why`.
fn assert_userspace_because(run: &Run, why: &str) {
    assert!(
        run.stdout.contains(", userspace mode.")
            && run
                .stdout
                .contains(&format!("Kernel mode is not available: {why}.")),
        "{}",
        run.all()
    );
}

/// The unprivileged user the rootless test runs as (`nobody`).
const NOBODY: u32 = 65534;

#[test]
fn the_tutorial_passes_in_kernel_mode_without_root() {
    if without_root("the test switches to an unprivileged user") {
        return;
    }
    // What the lab needs from the kernel: an unprivileged user namespace.
    let mut probe = std::process::Command::new("unshare");
    std::os::unix::process::CommandExt::uid(&mut probe, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut probe, NOBODY);
    match probe.args(["--user", "--map-root-user", "true"]).output() {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!("skipped: this kernel refuses unprivileged user namespaces: {other:?}");
            assert!(
                std::env::var_os("CI").is_none(),
                "CI machines allow unprivileged user namespaces"
            );
            return;
        }
    }
    let sandbox = Sandbox::default();
    let name = "e2e-rootless";
    let run = sandbox.labctl_as(NOBODY, &["tutorial", "--name", name], LIMIT);
    let _ = sandbox.labctl_as(
        NOBODY,
        &["down", "--name", name, "--purge"],
        Duration::from_secs(30),
    );
    assert_passed(&run, 6);
    assert_tutorial_commands(&run);
    for listing in [
        format!("{name}-worker$ iptables -t nat -L KUBE-SERVICES -n | column -t\n"),
        "PASS one KUBE-SEP chain per Ready Pod".into(),
        "client$ curl http://172.18.255.200/\n".into(),
        "# Kernel mode without root: the lab is root of an unprivileged user namespace of uid 65534".into(),
    ] {
        assert!(run.stdout.contains(&listing), "missing {listing:?}\n{}", run.all());
    }
    assert!(!run.stdout.contains("Userspace mode"), "{}", run.all());
    // The lab's namespaces lived in its own mount namespace, never in the host's /run/netns.
    assert!(namespaces_of(name).is_empty());
    eprintln!("rootless kernel-mode tutorial took {:.1?}", run.elapsed);
}

#[test]
fn without_user_namespaces_a_user_gets_userspace_mode_and_the_reason() {
    if without_root("the test confines an unprivileged user") {
        return;
    }
    let _one_at_a_time = e2e::userspace_lab();
    let sandbox = Sandbox::default();
    let name = "e2e-nouserns";
    let run =
        sandbox.labctl_as_without_user_namespaces(NOBODY, &["tutorial", "--name", name], LIMIT);
    let _ = sandbox.labctl_as(
        NOBODY,
        &["down", "--name", name, "--purge"],
        Duration::from_secs(30),
    );
    assert_passed(&run, 6);
    assert_userspace_because(
        &run,
        "not running as root, and an unprivileged user namespace could not be made (unshare(CLONE_NEWUSER): Operation not permitted (os error 1))",
    );
}

#[test]
fn the_tutorial_passes_in_userspace_mode() {
    let _one_at_a_time = e2e::userspace_lab();
    let sandbox = Sandbox::default();
    let run = sandbox.labctl(
        &["tutorial", "--name", "e2e-usr", "--dataplane", "userspace"],
        LIMIT,
    );
    sandbox.down("e2e-usr");
    assert_passed(&run, 6);
    assert_tutorial_commands(&run);
    assert!(run.stdout.contains("# Userspace mode"), "{}", run.all());
    // The listings cannot be made without kernel rules: reported as skipped, not as passed.
    assert!(
        run.stdout
            .contains("# SKIP the rule listings: userspace mode has no kernel rules"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains(", 2 skipped (see SKIP above)"),
        "{}",
        run.all()
    );
    assert!(namespaces_of("e2e-usr").is_empty());
    eprintln!("userspace-mode tutorial took {:.1?}", run.elapsed);
}

#[test]
fn a_kept_lab_stops_after_the_named_step_and_verify_judges_it() {
    let _one_at_a_time = e2e::userspace_lab();
    let sandbox = Sandbox::default();
    let name = "e2e-keep";
    let run = sandbox.labctl(
        &[
            "tutorial",
            "--name",
            name,
            "--dataplane",
            "userspace",
            "--step",
            "deployment",
            "--keep",
        ],
        LIMIT,
    );
    assert_passed(&run, 2);
    assert!(!run.stdout.contains("[3/6]"), "{}", run.all());
    assert!(
        run.stdout.contains("Stopping after step 2"),
        "{}",
        run.all()
    );
    // The lab is still up with the Deployment; expose it and judge the spread.
    let kubeconfig = sandbox.lab_dir(name).join("kubeconfig");
    let expose = std::process::Command::new("kubectl")
        .args([
            "expose",
            "deployment",
            "hello-world",
            "--port=80",
            "--target-port=8080",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBECACHEDIR", sandbox.dir.path().join("cache"))
        .output();
    let junit = sandbox.dir.path().join("verify.xml");
    let verify = match expose {
        Ok(out) if out.status.success() => Some(sandbox.labctl(
            &[
                "verify",
                "svc/hello-world",
                "--name",
                name,
                "--requests",
                "200",
                "--output",
                "json",
                "--junit",
                junit.to_str().unwrap(),
            ],
            LIMIT,
        )),
        _ => None,
    };
    let missing = sandbox.labctl(&["verify", "svc/nope", "--name", name], LIMIT);
    sandbox.down(name);
    let Some(verify) = verify else {
        eprintln!("skipped the verify part: kubectl is not on PATH");
        assert!(std::env::var_os("CI").is_none(), "CI has kubectl");
        return;
    };
    assert_eq!(verify.code, Some(0), "{}", verify.all());
    let report: serde_json::Value = serde_json::from_str(&verify.stdout).expect("JSON");
    assert_eq!(report["requests"], 200);
    assert_eq!(report["passed"], true);
    let shares = report["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 2, "{report}");
    assert!(
        shares
            .iter()
            .all(|s| s["ready"] == true && s["answers"].as_u64() > Some(0))
    );
    assert!(report["uniformity"]["p_value"].as_f64().unwrap() >= 0.001);
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert!(
        xml.contains(r#"failures="0""#) && xml.contains("every Ready Pod answered"),
        "{xml}"
    );
    assert_eq!(missing.code, Some(1), "{}", missing.all());
    assert!(
        missing
            .stderr
            .contains(r#"error: service "nope" not found in namespace "default""#),
        "{}",
        missing.all()
    );
}

/// A directory for PATH with `ip` and kubectl but none of the iptables tools, as on a fresh
/// machine; `None` (the test skips, except in CI) when either program is missing here.
fn path_without_iptables(sandbox: &Sandbox) -> Option<std::path::PathBuf> {
    let bin = sandbox.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for program in ["ip", "kubectl"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(program))
            .find(|p| p.is_file());
        let Some(found) = found else {
            eprintln!("skipped: {program} is not on PATH");
            assert!(std::env::var_os("CI").is_none(), "CI has {program}");
            return None;
        };
        std::os::unix::fs::symlink(found, bin.join(program)).unwrap();
    }
    Some(bin)
}

#[test]
fn a_lab_that_cannot_start_is_not_kept_so_other_flags_can_make_it() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root), to fail for want of iptables");
        return;
    }
    let _one_at_a_time = e2e::userspace_lab();
    let sandbox = Sandbox::default();
    let Some(bin) = path_without_iptables(&sandbox) else {
        return;
    };
    let name = "e2e-unkept";
    let path = [("PATH", bin.as_os_str())];
    let failed = sandbox.labctl_with(
        &["up", "--name", name, "--dataplane", "iptables"],
        &path,
        LIMIT,
    );
    let status = sandbox.labctl(&["status", "--name", name], LIMIT);
    let second = sandbox.labctl_with(
        &["up", "--name", name, "--dataplane", "userspace"],
        &path,
        LIMIT,
    );
    let other = sandbox.labctl(&["up", "--name", name, "--dataplane", "nftables"], LIMIT);
    sandbox.down(name);
    assert_eq!(failed.code, Some(1), "{}", failed.all());
    assert!(
        failed
            .stderr
            .contains(&format!("lab \"{name}\" did not start, so it was not kept"))
            && failed.stderr.contains("`iptables-restore` is not on PATH"),
        "{}",
        failed.all()
    );
    assert!(
        status
            .stdout
            .contains(&format!("Lab \"{name}\" does not exist")),
        "{}",
        status.all()
    );
    assert_eq!(second.code, Some(0), "{}", second.all());
    assert!(second.stdout.contains("Userspace mode"), "{}", second.all());
    // The dataplane is fixed once the lab exists: asking for another one is refused, with
    // the way to get it.
    assert_eq!(other.code, Some(1), "{}", other.all());
    assert!(
        other.stderr.contains(&format!(
            "lab \"{name}\" was made with the userspace dataplane"
        )) && other
            .stderr
            .contains(&format!("labctl down --name {name} --purge")),
        "{}",
        other.all()
    );
    assert!(namespaces_of(name).is_empty());
}

#[test]
fn without_iptables_the_tutorial_falls_back_to_userspace_and_says_why() {
    if !is_root() {
        eprintln!(
            "skipped: only root would get kernel mode, so there is nothing to fall back from"
        );
        return;
    }
    let _one_at_a_time = e2e::userspace_lab();
    let sandbox = Sandbox::default();
    let Some(bin) = path_without_iptables(&sandbox) else {
        return;
    };
    let run = sandbox.labctl_with(
        &["tutorial", "--name", "e2e-noipt"],
        &[("PATH", bin.as_os_str())],
        LIMIT,
    );
    sandbox.down("e2e-noipt");
    assert_passed(&run, 6);
    // Where root's PATH would find it, the reason says where it is instead of what to install.
    let why = if std::path::Path::new("/usr/sbin/iptables-restore").is_file() {
        "`iptables-restore` is not on PATH (it is installed at /usr/sbin/iptables-restore; add /usr/sbin to PATH)"
    } else {
        "`iptables-restore` is not on PATH; install the iptables package: `apt-get install iptables`"
    };
    assert_userspace_because(&run, why);
    assert!(namespaces_of("e2e-noipt").is_empty());
}

#[test]
fn a_tutorial_that_cannot_work_says_why_and_exits_non_zero() {
    let sandbox = Sandbox::default();
    let run = sandbox.labctl(
        &["tutorial", "--name", "e2e-none", "--network", "none"],
        LIMIT,
    );
    sandbox.down("e2e-none");
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout.contains("Tutorial failed after 0 checks"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("API-only") && run.stderr.contains("--network auto"),
        "{}",
        run.all()
    );
}

#[test]
fn an_existing_cluster_runs_the_tutorial_through_its_kubeconfig_and_is_left_as_found() {
    let _one_at_a_time = e2e::userspace_lab();
    // The embedded lab stands in for "any cluster": labctl only gets its kubeconfig.
    let sandbox = Sandbox::default();
    let up = sandbox.labctl(
        &["up", "--name", "e2e-kc", "--dataplane", "userspace"],
        LIMIT,
    );
    assert_eq!(up.code, Some(0), "{}", up.all());
    let kubeconfig = sandbox.lab_dir("e2e-kc").join("kubeconfig");
    let run = sandbox.labctl(
        &[
            "tutorial",
            "--name",
            "e2e-kc-run",
            "--provider",
            "kubeconfig",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--step",
            "nodeport",
        ],
        LIMIT,
    );
    // The tutorial's objects are gone again.
    let left = std::process::Command::new("kubectl")
        .args(["get", "deployments,services", "-o", "name"])
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBECACHEDIR", sandbox.dir.path().join("cache"))
        .output();
    sandbox.down("e2e-kc");
    assert_passed(&run, 4);
    assert!(
        run.stdout.contains("# An existing cluster: kubeconfig "),
        "{}",
        run.all()
    );
    // No place inside an arbitrary cluster to curl from: said, and counted as skipped.
    assert!(run.stdout.contains("# SKIP curl 10."), "{}", run.all());
    assert!(
        run.stdout.contains(
            "# SKIP the rule listings: an existing cluster gives labctl no shell on its nodes"
        ),
        "{}",
        run.all()
    );
    if let Ok(left) = left {
        let left = String::from_utf8_lossy(&left.stdout);
        assert!(!left.contains("hello-world"), "left behind: {left}");
    }
}

#[test]
fn the_kind_provider_explains_what_it_needs() {
    let sandbox = Sandbox::default();
    let run = sandbox.labctl(
        &["tutorial", "--name", "e2e-kind", "--provider", "kind"],
        LIMIT,
    );
    if e2e::on_path("kind") && e2e::on_path("docker") && docker_runs() {
        // A machine with Docker and kind runs the real thing.
        assert_passed(&run, 6);
        return;
    }
    eprintln!(
        "skipped the kind scenario: Docker and kind are not both usable here; checking the explanation instead"
    );
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains("the kind provider needs"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("--provider embedded"), "{}", run.all());
    // Nothing was made, so nothing is left.
    assert!(!sandbox.lab_dir("e2e-kind").exists(), "{}", run.all());
}

fn docker_runs() -> bool {
    std::process::Command::new("docker")
        .args(["info"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn an_unreachable_cluster_is_explained() {
    let sandbox = Sandbox::default();
    // A kubeconfig whose server nothing listens on (port 1 on loopback).
    let kubeconfig = sandbox.dir.path().join("unreachable.yaml");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    let tutorial_through = |kubeconfig: &str| {
        sandbox.labctl(
            &[
                "tutorial",
                "--name",
                "e2e-unreach",
                "--provider",
                "kubeconfig",
                "--kubeconfig",
                kubeconfig,
            ],
            LIMIT,
        )
    };
    let run = tutorial_through(kubeconfig.to_str().unwrap());
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr
            .contains("the cluster does not answer; check the kubeconfig and context"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("127.0.0.1:1"), "{}", run.all());

    // A kubeconfig that is not there is named as such, not blamed on a cluster.
    let missing = tutorial_through("no-such.yaml");
    assert_eq!(missing.code, Some(1), "{}", missing.all());
    assert!(
        missing.stderr.contains("no-such.yaml: no such file"),
        "{}",
        missing.all()
    );
}
