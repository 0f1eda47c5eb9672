//! Running the kernel's tools, optionally inside a named network namespace (as `ip netns
//! exec` would, without its mount namespace), with errors that say what failed and where.

use std::io::Write;
use std::process::{Command, Stdio};

/// Where rules are applied: a named network namespace (`/run/netns/NAME`) or, with `None`,
/// the caller's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Netns(pub Option<String>);

impl Netns {
    /// The namespace `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self(Some(name.into()))
    }

    /// Runs `tool` with `args` and `stdin` inside the namespace. The child is spawned from a
    /// thread that has entered the namespace (children inherit it), rather than through
    /// `ip netns exec`, which also makes a mount namespace and copies every mount into it:
    /// with a lab's thousand Pod namespaces pinned under /run/netns, that copy cost more
    /// than the tool itself.
    fn output(
        &self,
        tool: &'static str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<std::process::Output, ApplyError> {
        if self.0.is_none() {
            return spawn(tool, args, stdin);
        }
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let stdin = stdin.map(str::to_owned);
        self.within(tool, move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn(tool, &args, stdin.as_deref())
        })?
    }

    /// The namespace's inode number (0 for the caller's own), which tells a namespace from
    /// a later one of the same name.
    pub(crate) fn identity(&self) -> Result<u64, ApplyError> {
        use std::os::unix::fs::MetadataExt;
        let Some(ns) = &self.0 else {
            return Ok(0);
        };
        let path = std::path::Path::new("/run/netns").join(ns);
        std::fs::metadata(&path)
            .map(|m| m.ino())
            .map_err(|e| ApplyError::NoNetns {
                netns: ns.clone(),
                stderr: format!("reading {}: {e}", path.display()),
            })
    }

    /// Runs `work` on a thread inside the namespace (here, for the current one); `tool`
    /// names what runs, for errors.
    pub(crate) fn within<T: Send + 'static>(
        &self,
        tool: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApplyError> {
        let Some(ns) = &self.0 else {
            return Ok(work());
        };
        let path = std::path::Path::new("/run/netns").join(ns);
        let file = std::fs::File::open(&path).map_err(|e| ApplyError::NoNetns {
            netns: ns.clone(),
            stderr: format!("opening {}: {e}", path.display()),
        })?;
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| ApplyError::Io {
                tool,
                source: std::io::Error::other(format!("entering the network namespace: {e}")),
            })?;
            Ok(work())
        })
        .join()
        .map_err(|_| ApplyError::Io {
            tool,
            source: std::io::Error::other("the thread running it panicked"),
        })?
    }

    /// Lets NodePorts answer on 127.0.0.1: DNAT of loopback-sourced packets needs
    /// `route_localnet` (kube-proxy's localhost NodePorts), which is per namespace.
    pub(crate) fn enable_localhost_nodeports(&self) -> Result<(), ApplyError> {
        self.run(
            "sysctl",
            &["-q", "-w", "net.ipv4.conf.all.route_localnet=1"],
            None,
        )?;
        Ok(())
    }

    /// Runs `tool args` with `stdin`, returning its stdout.
    pub(crate) fn run(
        &self,
        tool: &'static str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ApplyError> {
        let out = self.output(tool, args, stdin)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
            return Err(ApplyError::NotPermitted { tool, stderr });
        }
        if stderr.contains("No such file or directory") && stderr.contains("netns") {
            return Err(ApplyError::NoNetns {
                netns: self.0.clone().unwrap_or_default(),
                stderr,
            });
        }
        if let (Some(input), Some(line)) = (stdin, failed_line(&stderr)) {
            return Err(ApplyError::Restore {
                tool,
                line,
                excerpt: excerpt(input, line),
                stderr,
            });
        }
        Err(ApplyError::Failed {
            tool,
            args: args.join(" "),
            stderr,
        })
    }
}

/// Runs `tool args` here, feeding it `stdin`.
fn spawn(
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, ApplyError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ApplyError::ToolMissing { tool }
            } else {
                ApplyError::Io { tool, source: e }
            }
        })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .map_err(|source| ApplyError::Io { tool, source })?;
    }
    child
        .wait_with_output()
        .map_err(|source| ApplyError::Io { tool, source })
}

/// Why rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The kernel did not take a change sent over netlink (nothing of it took effect).
    #[error("nf_tables netlink: {0}")]
    Netlink(#[from] super::nfnetlink::NetlinkError),
    /// The tool is not installed.
    #[error(
        "{tool} is not installed: install it (Debian: apt-get install iptables nftables iproute2)"
    )]
    ToolMissing {
        /// The missing tool.
        tool: &'static str,
    },
    /// The process may not change the kernel's rules.
    #[error(
        "{tool} was refused: {stderr}; programming rules needs root or CAP_NET_ADMIN in the namespace"
    )]
    NotPermitted {
        /// The tool.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
    /// The named namespace does not exist.
    #[error("network namespace {netns:?} does not exist: {stderr}")]
    NoNetns {
        /// The namespace.
        netns: String,
        /// What `ip` said.
        stderr: String,
    },
    /// The kernel refused a line of the restore input.
    #[error("{tool} failed at line {line}: {stderr}\n{excerpt}")]
    Restore {
        /// The tool.
        tool: &'static str,
        /// 1-based line of the input.
        line: usize,
        /// The failing line and its neighbours, numbered, the failing one marked.
        excerpt: String,
        /// What the tool said.
        stderr: String,
    },
    /// Any other failure of the tool.
    #[error("{tool} {args} failed: {stderr}")]
    Failed {
        /// The tool.
        tool: &'static str,
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// The tool could not be run or fed.
    #[error("running {tool}: {source}")]
    Io {
        /// The tool.
        tool: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The line number in iptables-restore's `Error occurred at line: 7` (or older
/// `line 7 failed`), or in `nft`'s `stdin:7:...`.
fn failed_line(stderr: &str) -> Option<usize> {
    if let Some(rest) = stderr.split("line").nth(1) {
        let digits = rest.trim_start_matches([':', ' ']);
        return digits
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok();
    }
    let rest = stderr.split("stdin:").nth(1)?;
    rest.split(':').next()?.parse().ok()
}

/// Lines `line - 1 ..= line + 1` of `input`, numbered, the failing one marked with `>`.
pub(crate) fn excerpt(input: &str, line: usize) -> String {
    input
        .lines()
        .enumerate()
        .map(|(i, text)| (i + 1, text))
        .filter(|(n, _)| n.abs_diff(line) <= 1)
        .map(|(n, text)| format!("{} {n:>5} | {text}", if n == line { ">" } else { " " }))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_lines_are_found_in_both_tools_messages() {
        assert_eq!(failed_line("iptables-restore: line 7 failed"), Some(7));
        assert_eq!(
            failed_line("Chain 'X' does not exist\nError occurred at line: 32\nTry ..."),
            Some(32)
        );
        assert_eq!(
            failed_line("/dev/stdin:3:1-4: Error: syntax error"),
            Some(3)
        );
        assert_eq!(
            failed_line("stdin:12:5-9: Error: Could not process rule"),
            Some(12)
        );
    }

    #[test]
    fn excerpt_marks_the_failing_line_with_neighbours() {
        let text = "a\nb\nc\nd\n";
        assert_eq!(excerpt(text, 2), "      1 | a\n>     2 | b\n      3 | c");
    }
}
