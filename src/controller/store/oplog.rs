//! Each operation's log (S31): what the controller did and what the node said, by step
//! and attempt, with a short message and the full detail.
//!
//! * The controller's lines are derived from the operation's own state change, in the
//!   transaction that writes it ([`transitions`], called by `save_op`): a step sent or
//!   started, done, failed (with the error), retried, undone; the operation's end. So the
//!   log can never disagree with the steps, and a crash loses neither.
//! * A node's lines come with its step's result (`StepFinished.log`, see
//!   `node::oplog`), numbered, so a replayed result adds nothing ([`append_node`]).
//!
//! The same diff feeds the step-duration histograms of `/metrics`.

use super::{StoreError, Tx};
use crate::controller::metrics::prom::TELEMETRY;
use crate::model::{LogLine, OpState, RunsOn, StepRecord, StepState};

/// One line as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub at: i64,
    pub source: String,
    pub step: Option<i64>,
    pub step_name: Option<String>,
    pub attempt: Option<i64>,
    pub undo: bool,
    pub level: String,
    pub message: String,
    pub detail: String,
}

/// A line to write.
struct Line<'a> {
    step: Option<(usize, &'a StepRecord)>,
    undo: bool,
    level: &'static str,
    message: String,
    detail: String,
}

/// What changed between the stored steps and `steps`, as log lines; each step that
/// ended is also timed for `/metrics`.
fn diff<'a>(
    kind: &str,
    node: Option<&str>,
    old: &[StepRecord],
    steps: &'a [StepRecord],
) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let before = old.get(i);
        let was = before.map(|b| (b.state, b.attempt));
        if was == Some((s.state, s.attempt)) {
            continue;
        }
        let undo = matches!(
            s.state,
            StepState::Undoing | StepState::Undone | StepState::UndoFailed
        );
        let on = match (s.runs_on, node) {
            (RunsOn::Node, Some(n)) => format!(" on node {n}"),
            _ => String::new(),
        };
        let err = s.error.clone().unwrap_or_default();
        let (level, message) = match s.state {
            StepState::Running => (
                "info",
                format!("step {} started{on} (attempt {})", s.name, s.attempt),
            ),
            StepState::Undoing => (
                "info",
                format!(
                    "undo of step {} started{on} (attempt {})",
                    s.name, s.attempt
                ),
            ),
            StepState::Done if before.is_some_and(|b| b.state == StepState::Undoing) => (
                "warn",
                format!("undo of step {} failed, will retry: {err}", s.name),
            ),
            StepState::Done => ("info", format!("step {} done", s.name)),
            StepState::Pending if s.error.is_some() => (
                "warn",
                format!(
                    "step {} attempt {} failed, will retry: {err}",
                    s.name, s.attempt
                ),
            ),
            StepState::Failed => ("error", format!("step {} failed: {err}", s.name)),
            StepState::Undone => ("info", format!("step {} undone", s.name)),
            StepState::UndoFailed => ("error", format!("undo of step {} failed: {err}", s.name)),
            StepState::Abandoned => ("warn", format!("step {} abandoned: {err}", s.name)),
            _ => continue,
        };
        if matches!(
            s.state,
            StepState::Done | StepState::Failed | StepState::Undone | StepState::UndoFailed
        ) {
            if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
                TELEMETRY.step(kind, &s.name, (b - a).max(0) as f64 / 1000.0);
            }
        }
        out.push(Line {
            step: Some((i, s)),
            undo,
            level,
            message,
            detail: err,
        });
    }
    out
}

/// Writes the lines for the change from the stored row of operation `id` to `steps`
/// and `state` (inside the transaction that saves them).
pub async fn transitions(
    tx: &mut Tx<'_>,
    id: &str,
    node: Option<&str>,
    steps: &[StepRecord],
    state: OpState,
    error: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let old: Option<(String, String, OpState)> =
        sqlx::query_as("SELECT kind, steps, state FROM operations WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((kind, old_steps, old_state)) = old else {
        return Ok(());
    };
    let old_steps: Vec<StepRecord> = serde_json::from_str(&old_steps).unwrap_or_default();
    let mut lines = diff(&kind, node, &old_steps, steps);
    if state != old_state && state.is_terminal() {
        let (level, detail) = match error {
            Some(e) => ("error", e.to_string()),
            None => ("info", String::new()),
        };
        lines.push(Line {
            step: None,
            undo: false,
            level,
            message: format!("operation {}", state.as_str()),
            detail,
        });
    }
    for l in lines {
        sqlx::query(
            "INSERT INTO op_log (op_id, at, source, step, step_name, attempt, undo, level, message, detail) \
             VALUES (?, ?, 'controller', ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(now)
        .bind(l.step.map(|(i, _)| i as i64))
        .bind(l.step.map(|(_, s)| s.name.clone()))
        .bind(l.step.map(|(_, s)| i64::from(s.attempt)))
        .bind(l.undo)
        .bind(l.level)
        .bind(&l.message)
        .bind(&l.detail)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A node's lines for one attempt of a step; lines already there (a replay) and lines
/// for an operation that no longer exists are skipped.
pub async fn append_node(
    tx: &mut Tx<'_>,
    node: &str,
    op_id: &str,
    step: usize,
    attempt: u32,
    undo: bool,
    lines: &[LogLine],
) -> Result<(), StoreError> {
    let source = format!("node:{node}");
    for (n, l) in lines.iter().enumerate() {
        sqlx::query(
            "INSERT OR IGNORE INTO op_log (op_id, at, source, step, step_name, attempt, undo, n, level, message, detail) \
             SELECT ?1, ?2, ?3, ?4, json_extract(o.steps, '$[' || ?4 || '].name'), ?5, ?6, ?7, ?8, ?9, ?10 \
             FROM operations o WHERE o.id = ?1",
        )
        .bind(op_id)
        .bind(l.at_ms)
        .bind(&source)
        .bind(step as i64)
        .bind(i64::from(attempt))
        .bind(undo)
        .bind(n as i64)
        .bind(short(&l.level, 16))
        .bind(short(&l.message, 1024))
        .bind(short(&l.detail, 16 * 1024))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A node's text, bounded: a node may not fill the database through its log.
fn short(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl super::Store {
    /// An operation's log, oldest first.
    pub async fn op_log(&self, op_id: &str) -> Result<Vec<LogRow>, StoreError> {
        Ok(sqlx::query_as::<_, LogRow>(
            "SELECT at, source, step, step_name, attempt, undo, level, message, detail \
             FROM op_log WHERE op_id = ? ORDER BY at, id",
        )
        .bind(op_id)
        .fetch_all(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, state: StepState, attempt: u32, error: Option<&str>) -> StepRecord {
        StepRecord {
            name: name.into(),
            runs_on: RunsOn::Node,
            state,
            attempt,
            tries: attempt,
            dispatched_at: None,
            lease_ms: None,
            started_at: Some(1000),
            finished_at: Some(3000),
            error: error.map(String::from),
            refusal: None,
            output: None,
        }
    }

    #[test]
    fn transitions_become_lines() {
        let old = vec![
            step("reserve", StepState::Running, 1, None),
            step("define", StepState::Pending, 0, None),
        ];
        let new = vec![
            step("reserve", StepState::Done, 1, None),
            step("define", StepState::Running, 1, None),
        ];
        let lines = diff("guest.create", Some("n1"), &old, &new);
        let msgs: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "step reserve done",
                "step define started on node n1 (attempt 1)"
            ]
        );
        let failed = vec![
            new[0].clone(),
            step("define", StepState::Failed, 1, Some("boom")),
        ];
        let lines = diff("guest.create", Some("n1"), &new, &failed);
        assert_eq!(lines.len(), 1);
        assert_eq!(
            (lines[0].level, lines[0].detail.as_str()),
            ("error", "boom")
        );
        assert!(diff("k", None, &failed, &failed).is_empty());
    }

    #[test]
    fn node_text_is_bounded_on_a_char_boundary() {
        assert_eq!(short("héllo", 2), "h…");
        assert_eq!(short("abc", 3), "abc");
    }
}
