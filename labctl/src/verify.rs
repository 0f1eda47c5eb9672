//! Load-distribution verdicts: who answered a run of requests through a Service, and whether
//! the split is one a uniform random choice among the Ready Pods would plausibly give.
//!
//! kube-proxy picks an endpoint uniformly at random (iptables `statistic` rules, nftables
//! `numgen random`), so the answers are a multinomial sample with equal cell probabilities; a
//! chi-square goodness-of-fit test says whether the counts reject that. The test only makes
//! sense when every cell expects a handful of answers, so the verdict says when it is skipped.
//!
//! A fair split is rejected by chance once in `1 / significance` runs, and a CI run makes about
//! 20 such checks; [`judge_confirmed`] therefore draws a second sample when the split is the
//! only thing wrong, and fails only when that one is rejected too. A strongly skewed dataplane
//! fails both (a mild skew is caught less often than by one sample); a chance split fails both
//! about once in `1 / significance^2` runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// The significance level the uniformity test uses unless told otherwise: a false alarm in one
/// run of a thousand.
pub const DEFAULT_SIGNIFICANCE: f64 = 0.001;

/// Fewer expected answers per Pod than this and the chi-square approximation is not trusted.
const MIN_EXPECTED_PER_POD: f64 = 5.0;

/// The answers to a run of requests, by the hostname each one named.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    by_host: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl Tally {
    /// Counts one response body (`Hostname: <pod>` names who answered).
    pub fn answer(&mut self, body: &str) {
        match hostname(body) {
            Some(host) => *self.by_host.entry(host.to_string()).or_default() += 1,
            None => self.failures.push(format!(
                "an answer without a Hostname line: {:?}",
                first_line(body)
            )),
        }
    }

    /// Counts a run of answers, each failure described by `why`.
    pub fn of<E>(
        answers: impl IntoIterator<Item = Result<String, E>>,
        why: impl Fn(E) -> String,
    ) -> Self {
        let mut tally = Tally::default();
        for answer in answers {
            match answer {
                Ok(body) => tally.answer(&body),
                Err(e) => tally.failure(why(e)),
            }
        }
        tally
    }

    /// Counts one request that got no answer.
    pub fn failure(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }

    /// Requests counted so far.
    pub fn requests(&self) -> u64 {
        self.by_host.values().sum::<u64>() + self.failures.len() as u64
    }
}

/// The `Hostname: ` line of a hello-app answer.
pub fn hostname(body: &str) -> Option<&str> {
    body.lines()
        .find_map(|l| l.strip_prefix("Hostname: "))
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

fn first_line(body: &str) -> &str {
    body.lines().next().unwrap_or("")
}

/// One Pod's share of the answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Share {
    /// The Pod (hostname) that answered.
    pub pod: String,
    /// How many answers it gave.
    pub answers: u64,
    /// Whether it was among the Ready Pods behind the Service.
    pub ready: bool,
}

/// The chi-square goodness-of-fit test against a uniform split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Uniformity {
    /// The statistic, sum of (observed - expected)^2 / expected.
    pub chi_square: f64,
    /// Degrees of freedom (Ready Pods - 1).
    pub degrees_of_freedom: u64,
    /// The probability of a split at least this uneven under uniform choice.
    pub p_value: f64,
    /// The level below which the p-value rejects uniformity.
    pub significance: f64,
    /// Whether the test rejected uniformity.
    pub rejected: bool,
}

/// The verdict on a run of requests.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// What was tested, e.g. `svc/hello-world via 10.96.0.12:80 from lab-worker`.
    pub target: String,
    /// Requests sent.
    pub requests: u64,
    /// Answers per Pod, Ready Pods first in name order, then any others.
    pub shares: Vec<Share>,
    /// Requests that got no proper answer, with why.
    pub failures: Vec<String>,
    /// The uniformity test, when it could be run.
    pub uniformity: Option<Uniformity>,
    /// Why it was not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniformity_skipped: Option<String>,
    /// The test of an earlier sample that rejected uniformity, when this report's sample was
    /// drawn to confirm it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_sample: Option<Uniformity>,
    /// Whether every check held.
    pub passed: bool,
    /// Why it failed, one line per reason (empty when it passed).
    pub reasons: Vec<String>,
}

/// Judges `tally` against the Pods that were Ready behind the Service.
pub fn judge(target: &str, tally: &Tally, ready: &[String], significance: f64) -> Report {
    let mut shares: Vec<Share> = ready
        .iter()
        .map(|pod| Share {
            pod: pod.clone(),
            answers: tally.by_host.get(pod).copied().unwrap_or(0),
            ready: true,
        })
        .collect();
    shares.sort_by(|a, b| a.pod.cmp(&b.pod));
    shares.dedup_by(|a, b| a.pod == b.pod);
    for (pod, &answers) in &tally.by_host {
        if !ready.contains(pod) {
            shares.push(Share {
                pod: pod.clone(),
                answers,
                ready: false,
            });
        }
    }
    let mut reasons = Vec::new();
    if ready.is_empty() {
        reasons.push("no Pod behind the Service is Ready".to_string());
    }
    if !tally.failures.is_empty() {
        reasons.push(format!(
            "{} of {} requests got no answer (first: {})",
            tally.failures.len(),
            tally.requests(),
            tally.failures[0]
        ));
    }
    let silent: Vec<&str> = shares
        .iter()
        .filter(|s| s.ready && s.answers == 0)
        .map(|s| s.pod.as_str())
        .collect();
    if !silent.is_empty() {
        reasons.push(format!(
            "Ready Pods that never answered: {}",
            silent.join(", ")
        ));
    }
    let strangers: Vec<&str> = shares
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.pod.as_str())
        .collect();
    if !strangers.is_empty() {
        reasons.push(format!(
            "answers from Pods that are not Ready behind the Service: {}",
            strangers.join(", ")
        ));
    }
    let counts: Vec<u64> = shares
        .iter()
        .filter(|s| s.ready)
        .map(|s| s.answers)
        .collect();
    let uniformity = uniformity(&counts, significance);
    if let Ok(u) = &uniformity
        && u.rejected
    {
        reasons.push(format!(
            "the split is not uniform: chi-square {:.2} with {} degrees of freedom, p = {:.2e} < {}",
            u.chi_square, u.degrees_of_freedom, u.p_value, u.significance
        ));
    }
    Report {
        target: target.to_string(),
        requests: tally.requests(),
        shares,
        failures: tally.failures.clone(),
        uniformity_skipped: uniformity.as_ref().err().cloned(),
        uniformity: uniformity.ok(),
        first_sample: None,
        passed: reasons.is_empty(),
        reasons,
    }
}

/// Judges a sample from `sample`, and when uniformity is the only check it fails, a second
/// one: the verdict is the second's, with the first's test kept in [`Report::first_sample`].
pub fn judge_confirmed(
    target: &str,
    ready: &[String],
    significance: f64,
    mut sample: impl FnMut() -> Tally,
) -> Report {
    let first = judge(target, &sample(), ready, significance);
    let only_the_split =
        first.reasons.len() == 1 && first.uniformity.as_ref().is_some_and(|u| u.rejected);
    if !only_the_split {
        return first;
    }
    let mut second = judge(target, &sample(), ready, significance);
    second.first_sample = first.uniformity;
    second
}

/// The chi-square test of `counts` against equal shares.
fn uniformity(counts: &[u64], significance: f64) -> Result<Uniformity, String> {
    let k = counts.len();
    let n: u64 = counts.iter().sum();
    if k < 2 {
        return Err("one Ready Pod: there is no split to test".to_string());
    }
    let expected = n as f64 / k as f64;
    if expected < MIN_EXPECTED_PER_POD {
        return Err(format!(
            "{n} answers over {k} Pods expect {expected:.1} per Pod, too few for a chi-square test (send at least {} requests)",
            (MIN_EXPECTED_PER_POD * k as f64).ceil()
        ));
    }
    let chi_square: f64 = counts
        .iter()
        .map(|&o| (o as f64 - expected).powi(2) / expected)
        .sum();
    let degrees_of_freedom = (k - 1) as u64;
    let distribution = ChiSquared::new(degrees_of_freedom as f64)
        .map_err(|e| format!("chi-square distribution: {e}"))?;
    let p_value = distribution.sf(chi_square);
    Ok(Uniformity {
        chi_square,
        degrees_of_freedom,
        p_value,
        significance,
        rejected: p_value < significance,
    })
}

/// A bar per Pod, scaled to the largest share, with counts and percentages.
pub fn chart(report: &Report) -> String {
    const WIDTH: u64 = 40;
    let most = report
        .shares
        .iter()
        .map(|s| s.answers)
        .max()
        .unwrap_or(0)
        .max(1);
    let name_width = report.shares.iter().map(|s| s.pod.len()).max().unwrap_or(0);
    let count_width = most.to_string().len();
    let total = report.requests.max(1);
    let mut out = String::new();
    for s in &report.shares {
        let bar = (s.answers * WIDTH).div_ceil(most) as usize;
        let _ = writeln!(
            out,
            "  {:<name_width$}  {:<width$}  {:>count_width$}  {:>5.1}%{}",
            s.pod,
            "█".repeat(bar),
            s.answers,
            100.0 * s.answers as f64 / total as f64,
            if s.ready { "" } else { "  (not Ready)" },
            width = WIDTH as usize,
        );
    }
    if !report.failures.is_empty() {
        let _ = writeln!(
            out,
            "  {:<name_width$}  {:<width$}  {:>count_width$}",
            "(no answer)",
            "",
            report.failures.len(),
            width = WIDTH as usize,
        );
    }
    out
}

/// One line that states the verdict and the test behind it.
pub fn summary(report: &Report) -> String {
    let ready = report.shares.iter().filter(|s| s.ready).count();
    let answered = report
        .shares
        .iter()
        .filter(|s| s.ready && s.answers > 0)
        .count();
    let test = match (&report.uniformity, &report.uniformity_skipped) {
        (Some(u), _) => format!(
            "chi-square {:.2} ({} df), p = {:.3} {} {}",
            u.chi_square,
            u.degrees_of_freedom,
            u.p_value,
            if u.rejected { "<" } else { ">=" },
            u.significance
        ),
        (None, why) => format!(
            "uniformity not tested: {}",
            why.as_deref().unwrap_or("no answers")
        ),
    };
    let again = match &report.first_sample {
        None => String::new(),
        Some(first) => format!(
            " (a second sample: the first one's split had p = {:.2e} < {})",
            first.p_value, first.significance
        ),
    };
    format!(
        "{} requests, {answered}/{ready} Ready Pods answered, {test}{again}",
        report.requests
    )
}

/// The report as a JUnit document (one test case per check) for CI dashboards.
pub fn junit(report: &Report, suite: &str) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report as Junit, TestCase, TestCaseStatus, TestSuite};
    let mut cases = Vec::new();
    let mut case = |name: &str, failure: Option<String>| {
        let status = match failure {
            None => TestCaseStatus::success(),
            Some(message) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(message);
                s
            }
        };
        cases.push(TestCase::new(name, status));
    };
    case(
        "every request answered",
        (!report.failures.is_empty()).then(|| {
            format!(
                "{} of {} requests got no answer",
                report.failures.len(),
                report.requests
            )
        }),
    );
    let silent: Vec<&str> = report
        .shares
        .iter()
        .filter(|s| s.ready && s.answers == 0)
        .map(|s| s.pod.as_str())
        .collect();
    case(
        "every Ready Pod answered",
        (!silent.is_empty() || report.shares.iter().all(|s| !s.ready))
            .then(|| format!("silent: {}", silent.join(", "))),
    );
    case(
        "only Ready Pods answered",
        report
            .shares
            .iter()
            .any(|s| !s.ready)
            .then(|| "answers from Pods that are not Ready".to_string()),
    );
    if let Some(u) = &report.uniformity {
        let first = report.first_sample.as_ref().map_or(String::new(), |f| {
            format!(
                "; a first sample too: chi-square {:.2}, p = {:.2e}",
                f.chi_square, f.p_value
            )
        });
        case(
            "split is uniform (chi-square)",
            u.rejected.then(|| {
                format!(
                    "chi-square {:.2}, p = {:.2e} < {}{first}",
                    u.chi_square, u.p_value, u.significance
                )
            }),
        );
    }
    let mut suite_ = TestSuite::new(suite);
    suite_.add_test_cases(cases);
    let mut junit = Junit::new("labctl verify");
    junit.add_test_suite(suite_);
    junit.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(counts: &[(&str, u64)]) -> Tally {
        let mut t = Tally::default();
        for &(pod, n) in counts {
            for _ in 0..n {
                t.answer(&format!("Hello, world!\nVersion: 1.0.0\nHostname: {pod}\n"));
            }
        }
        t
    }

    fn pods(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_even_split_passes() {
        let r = judge(
            "t",
            &tally(&[("a", 52), ("b", 48)]),
            &pods(&["a", "b"]),
            0.001,
        );
        assert!(r.passed, "{:?}", r.reasons);
        let u = r.uniformity.expect("tested");
        // (52-50)^2/50 + (48-50)^2/50 = 0.16; P(chi2(1) >= 0.16) = 0.6892.
        assert!((u.chi_square - 0.16).abs() < 1e-9);
        assert!((u.p_value - 0.6892).abs() < 1e-3, "{}", u.p_value);
    }

    #[test]
    fn a_lopsided_split_is_rejected_with_its_numbers() {
        let r = judge(
            "t",
            &tally(&[("a", 90), ("b", 10)]),
            &pods(&["a", "b"]),
            0.001,
        );
        assert!(!r.passed);
        assert_eq!(r.reasons.len(), 1, "{:?}", r.reasons);
        assert!(
            r.reasons[0].starts_with(
                "the split is not uniform: chi-square 64.00 with 1 degrees of freedom"
            ),
            "{}",
            r.reasons[0]
        );
    }

    #[test]
    fn a_silent_pod_and_a_stranger_are_named() {
        let r = judge(
            "t",
            &tally(&[("a", 50), ("x", 2)]),
            &pods(&["a", "b"]),
            0.001,
        );
        assert!(!r.passed);
        assert!(
            r.reasons
                .iter()
                .any(|m| m == "Ready Pods that never answered: b"),
            "{:?}",
            r.reasons
        );
        assert!(
            r.reasons
                .iter()
                .any(|m| m.ends_with("not Ready behind the Service: x")),
            "{:?}",
            r.reasons
        );
        assert_eq!(
            r.shares.last().unwrap(),
            &Share {
                pod: "x".into(),
                answers: 2,
                ready: false
            }
        );
    }

    #[test]
    fn failures_fail_and_too_few_requests_skip_the_test() {
        let mut t = tally(&[("a", 3), ("b", 3)]);
        t.failure("connection refused");
        let r = judge("t", &t, &pods(&["a", "b"]), 0.001);
        assert_eq!(r.requests, 7);
        assert!(
            r.reasons[0].starts_with("1 of 7 requests got no answer (first: connection refused)")
        );
        assert!(
            r.uniformity_skipped
                .unwrap()
                .contains("send at least 10 requests")
        );
        let one = judge("t", &tally(&[("a", 20)]), &pods(&["a"]), 0.001);
        assert!(one.passed);
        assert!(one.uniformity.is_none());
    }

    #[test]
    fn chart_and_summary_read_at_a_glance() {
        let r = judge(
            "t",
            &tally(&[("hello-b", 25), ("hello-a", 50)]),
            &pods(&["hello-a", "hello-b"]),
            0.001,
        );
        let chart = chart(&r);
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(
            lines[0],
            format!("  hello-a  {}  50   66.7%", "█".repeat(40))
        );
        assert_eq!(
            lines[1],
            format!(
                "  hello-b  {}{}  25   33.3%",
                "█".repeat(20),
                " ".repeat(20)
            )
        );
        assert_eq!(
            summary(&r),
            "75 requests, 2/2 Ready Pods answered, chi-square 8.33 (1 df), p = 0.004 >= 0.001"
        );
    }

    #[test]
    fn junit_has_a_case_per_check() {
        let r = judge(
            "t",
            &tally(&[("a", 90), ("b", 10)]),
            &pods(&["a", "b"]),
            0.001,
        );
        let xml = junit(&r, "svc/hello-world").unwrap();
        assert!(
            xml.contains(
                r#"<testsuite name="svc/hello-world" tests="4" skipped="0" errors="0" failures="1""#
            ),
            "{xml}"
        );
        assert!(xml.contains("split is uniform (chi-square)"), "{xml}");
    }

    #[test]
    fn a_rejected_split_is_sampled_again_and_the_second_sample_decides() {
        let mut samples = vec![
            tally(&[("a", 67), ("b", 33)]),
            tally(&[("a", 48), ("b", 52)]),
        ]
        .into_iter();
        let r = judge_confirmed("t", &pods(&["a", "b"]), 0.001, || samples.next().unwrap());
        assert!(r.passed, "{:?}", r.reasons);
        assert_eq!(r.shares[0].answers, 48);
        let first = r
            .first_sample
            .as_ref()
            .expect("the first sample's test is kept");
        assert!(first.rejected && first.p_value < 0.001, "{first:?}");
        assert!(
            summary(&r)
                .ends_with("(a second sample: the first one's split had p = 6.74e-4 < 0.001)"),
            "{}",
            summary(&r)
        );

        let mut samples = vec![
            tally(&[("a", 90), ("b", 10)]),
            tally(&[("a", 88), ("b", 12)]),
        ]
        .into_iter();
        let r = judge_confirmed("t", &pods(&["a", "b"]), 0.001, || samples.next().unwrap());
        assert!(!r.passed);
        assert_eq!(
            r.shares[0].answers, 88,
            "the verdict is the second sample's"
        );
        let xml = junit(&r, "svc/hello-world").unwrap();
        assert!(
            xml.contains("a first sample too: chi-square 64.00"),
            "{xml}"
        );
    }

    #[test]
    fn other_failures_are_not_sampled_again() {
        let mut drawn = 0;
        let r = judge_confirmed("t", &pods(&["a", "b"]), 0.001, || {
            drawn += 1;
            tally(&[("a", 100)])
        });
        assert_eq!(drawn, 1, "a silent Pod is not chance");
        assert!(!r.passed);
        assert!(r.first_sample.is_none());
        let mut drawn = 0;
        let r = judge_confirmed("t", &pods(&["a", "b"]), 0.001, || {
            drawn += 1;
            tally(&[("a", 50), ("b", 50)])
        });
        assert_eq!(drawn, 1);
        assert!(r.passed);
    }
}
