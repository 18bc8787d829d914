//! Following operations to their end: progress bars redrawn in place on a terminal, one
//! line per change when the output is a file or a pipe (a log then reads as a history,
//! not hundreds of repeated lines).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use corral_client::apis::{guests_api, operations_api};
use corral_client::models::Operation;

use super::{CliError, Client};

const TERMINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// One operation as shown: what it is about, and where it is.
struct Line {
    label: String,
    shown: Option<(String, String, u32)>,
    done: bool,
    ok: bool,
}

impl Client {
    /// Follows `ids` until every one has ended; true when all succeeded. Failures are
    /// reported with the operation's error.
    pub async fn follow(&self, ids: &[String]) -> Result<bool, CliError> {
        let tty = std::io::stdout().is_terminal();
        let mut names: HashMap<String, String> = HashMap::new();
        let mut lines: Vec<Line> = Vec::new();
        for id in ids {
            let op = operations_api::operation_get(self.config(), id).await?;
            let label = self.label(&op, &mut names).await;
            lines.push(Line {
                label,
                shown: None,
                done: false,
                ok: false,
            });
        }
        let width = lines.iter().map(|l| l.label.len()).max().unwrap_or(0);
        let mut drawn = 0usize;
        loop {
            let ops = self.poll(ids, &lines).await?;
            draw(&mut lines, &ops, tty, width, drawn);
            drawn = lines.len();
            if lines.iter().all(|l| l.done) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.report_failures(ids, &lines, tty).await
    }

    /// The operations not yet ended, as they are now; None for those that have.
    async fn poll(
        &self,
        ids: &[String],
        lines: &[Line],
    ) -> Result<Vec<Option<Operation>>, CliError> {
        let mut ops = Vec::with_capacity(ids.len());
        for (id, line) in ids.iter().zip(lines) {
            // Ended operations are not asked again.
            if line.done {
                ops.push(None);
            } else {
                ops.push(Some(
                    operations_api::operation_get(self.config(), id).await?,
                ));
            }
        }
        Ok(ops)
    }

    /// After the end: on a terminal, the errors below the bars; then how many failed.
    /// True when all succeeded.
    async fn report_failures(
        &self,
        ids: &[String],
        lines: &[Line],
        tty: bool,
    ) -> Result<bool, CliError> {
        let failed: Vec<&Line> = lines.iter().filter(|l| !l.ok).collect();
        if tty {
            for (id, line) in ids.iter().zip(lines) {
                if !line.ok {
                    let op = operations_api::operation_get(self.config(), id).await?;
                    if let Some(e) = op.error {
                        eprintln!("{}: {}", line.label, super::output::printable(&e));
                    }
                }
            }
        }
        if !failed.is_empty() {
            eprintln!(
                "{} of {} operations did not succeed; `corral op show <id>` shows their steps",
                failed.len(),
                lines.len()
            );
        }
        Ok(failed.is_empty())
    }

    /// `guest.create web-1 (3f2a9c1e)`: the kind, the guest's name when there is one, and
    /// the operation's short id.
    async fn label(&self, op: &Operation, names: &mut HashMap<String, String>) -> String {
        let short = &op.id[..op.id.len().min(8)];
        let guest = match &op.guest_id {
            Some(g) => match names.get(g) {
                Some(n) => n.clone(),
                None => {
                    let n = guests_api::guest_get(self.config(), g)
                        .await
                        .map(|x| x.name)
                        .unwrap_or_else(|_| g[..g.len().min(8)].to_string());
                    names.insert(g.clone(), n.clone());
                    n
                }
            },
            None => String::new(),
        };
        format!("{} {guest} ({short})", op.kind)
            .replace("  ", " ")
            .trim()
            .to_string()
    }
}

/// One round of output: on a terminal the `drawn` bars are redrawn in place; otherwise a
/// line for each operation whose state, stage or percentage changed (and its error, once
/// it has failed). Updates `lines` from `ops`.
fn draw(lines: &mut [Line], ops: &[Option<Operation>], tty: bool, width: usize, drawn: usize) {
    let mut out = std::io::stdout().lock();
    if tty && drawn > 0 {
        let _ = write!(out, "\x1b[{drawn}A");
    }
    for (line, op) in lines.iter_mut().zip(ops) {
        let Some(op) = op else {
            if tty {
                let _ = writeln!(out, "{}", bar_line(line, width));
            }
            continue;
        };
        let now = (
            op.state.clone(),
            super::output::printable_line(&op.progress.stage),
            op.progress.percent,
        );
        line.done = TERMINAL.contains(&op.state.as_str());
        line.ok = op.state == "succeeded";
        let changed = line.shown.as_ref() != Some(&now);
        line.shown = Some(now);
        if tty {
            let _ = write!(out, "\x1b[2K");
            let _ = writeln!(out, "{}", bar_line(line, width));
        } else if changed {
            let _ = writeln!(out, "{}", plain_line(line, width));
        }
        if line.done && !line.ok {
            if let Some(e) = &op.error {
                if tty {
                    // Reprinted below the bars once everything has ended.
                } else {
                    let e = super::output::printable(e);
                    let _ = writeln!(out, "{:width$}  error: {e}", line.label);
                }
            }
        }
    }
    let _ = out.flush();
}

fn bar_line(line: &Line, width: usize) -> String {
    let (state, stage, pct) = line.shown.clone().unwrap_or_default();
    let filled = (pct as usize * 24 / 100).min(24);
    let bar = format!("{}{}", "#".repeat(filled), ".".repeat(24 - filled));
    let what = if TERMINAL.contains(&state.as_str()) {
        state
    } else {
        stage
    };
    format!("{:width$}  [{bar}] {pct:>3}%  {what}", line.label)
}

fn plain_line(line: &Line, width: usize) -> String {
    let (state, stage, pct) = line.shown.clone().unwrap_or_default();
    format!("{:width$}  {state:<9} {pct:>3}%  {stage}", line.label)
}
