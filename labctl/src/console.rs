//! How labctl's walkthroughs read on a terminal: numbered steps, the commands a user would
//! type, their output as it came, and verdicts. Colour only when stdout is a terminal (and
//! `NO_COLOR` is unset): anstream strips the styles otherwise.

use std::io::Write;
use std::time::Duration;

use anstyle::{AnsiColor, Style};

const STEP: Style = AnsiColor::Cyan.on_default().bold();
const COMMAND: Style = Style::new().bold();
const PROMPT: Style = AnsiColor::BrightBlack.on_default();
const PASS: Style = AnsiColor::Green.on_default().bold();
const FAIL: Style = AnsiColor::Red.on_default().bold();
const NOTE: Style = AnsiColor::Yellow.on_default();

/// Writes to stdout, styled when it is a terminal.
pub struct Console {
    out: anstream::AutoStream<std::io::Stdout>,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            out: anstream::AutoStream::auto(std::io::stdout()),
        }
    }
}

impl Console {
    /// A heading: `[3/6] ClusterIP: ...`.
    pub fn step(&mut self, number: usize, total: usize, title: &str) {
        let _ = writeln!(self.out, "\n{STEP}[{number}/{total}] {title}{STEP:#}");
    }

    /// A command as the user would type it, with where it runs (`$` on the host).
    pub fn command(&mut self, place: Option<&str>, line: &str) {
        let prompt = match place {
            Some(p) => format!("{p}$ "),
            None => "$ ".to_string(),
        };
        let _ = writeln!(
            self.out,
            "{PROMPT}{prompt}{PROMPT:#}{COMMAND}{line}{COMMAND:#}"
        );
    }

    /// Output as it came.
    pub fn output(&mut self, text: &str) {
        let _ = write!(self.out, "{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            let _ = writeln!(self.out);
        }
    }

    /// A remark that is not output of the command above.
    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.out, "{NOTE}# {text}{NOTE:#}");
    }

    /// A check that held.
    pub fn pass(&mut self, text: &str) {
        let _ = writeln!(self.out, "{PASS}PASS{PASS:#} {text}");
    }

    /// A check that did not hold.
    pub fn fail(&mut self, text: &str) {
        let _ = writeln!(self.out, "{FAIL}FAIL{FAIL:#} {text}");
    }

    /// The closing line.
    pub fn summary(&mut self, passed: bool, text: &str) {
        let style = if passed { PASS } else { FAIL };
        let _ = writeln!(self.out, "\n{style}{text}{style:#}");
    }
}

/// A spinner on stderr while something is awaited (hidden when stderr is not a terminal).
pub fn spinner(message: impl Into<String>) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Aligns whitespace-separated columns as `column -t` does (two spaces between columns).
pub fn column_t(text: &str) -> String {
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn column_t_pads_like_the_tool() {
        let text = "Chain KUBE-NODEPORTS (1 references)\ntarget prot opt source destination\nKUBE-EXT-X tcp -- 0.0.0.0/0 0.0.0.0/0\n";
        assert_eq!(
            super::column_t(text),
            "Chain       KUBE-NODEPORTS  (1   references)\n\
             target      prot            opt  source       destination\n\
             KUBE-EXT-X  tcp             --   0.0.0.0/0    0.0.0.0/0\n"
        );
    }
}
