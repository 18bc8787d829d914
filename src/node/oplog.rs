//! What a node logs while it runs a step, kept for the operation's log (S31).
//!
//! The job handler runs each step inside a `step` span carrying `op`, `step`, `attempt`
//! and `undo`. [`Capture`], a `tracing` layer installed by every corral process
//! (`process::init_tracing`), copies each event logged inside such a span, at `debug` and
//! above, into a buffer for that attempt; the handler [`take`]s the buffer when it sends
//! the step's result, and the lines travel with it (`StepFinished.log`). Events outside a
//! step span are not kept, and what goes to stderr or the files is still decided by
//! `CORRAL_LOG` alone (no debug output unless asked, S45).
//!
//! An attempt keeps at most [`MAX_LINES`] lines; the last one then says how many more
//! there were.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::model::{now_ms, LogLine};

/// Lines kept per attempt.
pub const MAX_LINES: usize = 200;

/// Which attempt of which step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Key {
    pub op: String,
    pub step: u64,
    pub attempt: u64,
    pub undo: bool,
}

#[derive(Default)]
struct Buffer {
    lines: Vec<LogLine>,
    dropped: usize,
}

static BUFFERS: LazyLock<Mutex<HashMap<Key, Buffer>>> = LazyLock::new(Default::default);

/// The lines logged for `key` so far, removed from the buffer.
pub fn take(key: &Key) -> Vec<LogLine> {
    let Some(b) = BUFFERS.lock().ok().and_then(|mut m| m.remove(key)) else {
        return Vec::new();
    };
    let mut lines = b.lines;
    if b.dropped > 0 {
        lines.push(LogLine {
            at_ms: now_ms(),
            level: "warn".into(),
            message: format!("{} more lines were not kept", b.dropped),
            detail: String::new(),
        });
    }
    lines
}

/// The layer.
pub struct Capture;

/// Reads a `step` span's key fields.
impl Visit for Key {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "step" => self.step = value,
            "attempt" => self.attempt = value,
            _ => {}
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "undo" {
            self.undo = value;
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "op" {
            self.op = value.to_string();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "op" {
            self.op = format!("{value:?}").trim_matches('"').to_string();
        }
    }
}

/// An event's message and its other fields.
#[derive(Default)]
struct Text {
    message: String,
    detail: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let _ = write!(self.detail, "{}{}={value}", sep(&self.detail), field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(
                self.detail,
                "{}{}={value:?}",
                sep(&self.detail),
                field.name()
            );
        }
    }
}

fn sep(s: &str) -> &'static str {
    if s.is_empty() {
        ""
    } else {
        " "
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "step" {
            return;
        }
        let mut key = Key::default();
        attrs.record(&mut key);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(key);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(key) = scope
            .from_root()
            .find_map(|s| s.extensions().get::<Key>().cloned())
        else {
            return;
        };
        let mut text = Text::default();
        event.record(&mut text);
        let line = LogLine {
            at_ms: now_ms(),
            level: event.metadata().level().as_str().to_ascii_lowercase(),
            message: text.message,
            detail: text.detail,
        };
        if let Ok(mut m) = BUFFERS.lock() {
            let b = m.entry(key).or_default();
            if b.lines.len() < MAX_LINES {
                b.lines.push(line);
            } else {
                b.dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_inside_a_step_span_are_kept_by_attempt() {
        let sub = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::with_default(sub, || {
            tracing::info!("outside: not kept");
            let span = tracing::info_span!(
                "step",
                op = "op-x",
                step = 2u64,
                attempt = 3u64,
                undo = false
            );
            span.in_scope(|| {
                tracing::debug!(sub_step = "define", "defined");
                tracing::error!(error = "no space", "sub-step start failed");
            });
        });
        let key = Key {
            op: "op-x".into(),
            step: 2,
            attempt: 3,
            undo: false,
        };
        let lines = take(&key);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (lines[0].level.as_str(), lines[0].message.as_str()),
            ("debug", "defined")
        );
        assert_eq!(lines[0].detail, "sub_step=define");
        assert_eq!(lines[1].level, "error");
        assert!(take(&key).is_empty(), "taken once");
    }
}
