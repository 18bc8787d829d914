//! Loading one plugin: read its manifest, check it, compile its script.
//!
//! Every check here runs once, at start, so a mistake in a plugin shows up in the plugin
//! list (state "error" with the message) instead of in the middle of a guest's creation.
//! The messages name the file and say what to change.

use std::collections::BTreeSet;
use std::path::{Component, Path};

use rhai::{Array, Dynamic, Map};
use serde::Deserialize;

use crate::script::sandbox::{Sandbox, Script, ScriptError};

/// The manifest's file name inside a plugin's directory.
pub(super) const MANIFEST: &str = "plugin.toml";

/// The hooks a manifest may declare, for messages.
const HOOKS: &str = "placement, before:<kind>, before:*, after:<kind>, after:*, after_step, event";

/// One hook a plugin declares, parsed from its `hooks` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Hook {
    Placement,
    /// `before:<kind>`; `None` is `before:*`, every kind.
    Before(Option<String>),
    /// `after:<kind>`; `None` is `after:*`.
    After(Option<String>),
    AfterStep,
    Event,
}

impl Hook {
    fn parse(s: &str) -> Result<Hook, String> {
        let kind = |k: &str| -> Result<Option<String>, String> {
            match k {
                "*" => Ok(None),
                // A kind is an operation kind such as `guest.create`: one word, so a typo
                // like "before: guest.create" is caught here instead of never matching.
                k if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) =>
                {
                    Ok(Some(k.to_string()))
                }
                _ => Err(format!(
                    "hook {s:?} needs an operation kind after the colon, e.g. \"before:guest.create\", or * for every kind"
                )),
            }
        };
        match s {
            "placement" => Ok(Hook::Placement),
            "after_step" => Ok(Hook::AfterStep),
            "event" => Ok(Hook::Event),
            _ => {
                if let Some(k) = s.strip_prefix("before:") {
                    kind(k).map(Hook::Before)
                } else if let Some(k) = s.strip_prefix("after:") {
                    kind(k).map(Hook::After)
                } else {
                    Err(format!("unknown hook {s:?}: use one of {HOOKS}"))
                }
            }
        }
    }

    /// The Rhai function the hook calls, and its number of parameters.
    pub(super) fn entry(&self) -> (&'static str, usize) {
        match self {
            Hook::Placement => ("score", 3),
            Hook::Before(_) => ("before", 3),
            Hook::After(_) => ("after", 3),
            Hook::AfterStep => ("after_step", 4),
            Hook::Event => ("on_event", 2),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    script: String,
    hooks: Vec<String>,
    #[serde(default)]
    adjust: Vec<String>,
    #[serde(default)]
    config: toml::Table,
}

/// A plugin's description from its manifest, filled as far as the manifest could be read, so
/// even a broken plugin is listed with its version.
#[derive(Default)]
pub(super) struct Header {
    pub version: String,
    pub description: String,
    pub hooks: Vec<String>,
}

/// A plugin that passed every check and may run.
pub(super) struct Loaded {
    pub script: Script,
    pub hooks: Vec<Hook>,
    /// The request fields `before` may set.
    pub adjust: Vec<String>,
    /// The manifest's `[config]`, converted once; every hook gets a copy.
    pub config: Dynamic,
}

/// Loads the plugin in `dir`, which the plugins directory lists as `name`.
pub(super) fn load(sandbox: &Sandbox, dir: &Path, name: &str) -> (Header, Result<Loaded, String>) {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            let e = format!(
                "cannot read {}: {e}; every plugin directory needs a {MANIFEST}",
                path.display()
            );
            return (Header::default(), Err(e));
        }
    };
    let m: Manifest = match toml::from_str(&text) {
        Ok(m) => m,
        Err(e) => {
            let e = format!(
                "{}{}: {}",
                path.display(),
                toml_position(&text, &e),
                e.message().trim_end()
            );
            return (Header::default(), Err(e));
        }
    };
    let header = Header {
        version: m.version.clone(),
        description: m.description.clone(),
        hooks: m.hooks.clone(),
    };
    (header, check(sandbox, dir, name, m))
}

fn check(sandbox: &Sandbox, dir: &Path, name: &str, m: Manifest) -> Result<Loaded, String> {
    // The directory name is what the controller's `plugins` setting refers to; a manifest
    // naming something else is most likely a copied plugin whose name was not updated.
    if m.name != name {
        return Err(format!(
            "{MANIFEST} says name = {:?} but the directory is {name:?}: make them equal",
            m.name
        ));
    }
    if m.hooks.is_empty() {
        return Err(format!(
            "{MANIFEST} declares no hooks: list at least one of {HOOKS}"
        ));
    }
    let hooks = m
        .hooks
        .iter()
        .map(|h| Hook::parse(h).map_err(|e| format!("{MANIFEST}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let source = read_script(dir, &m.script)?;
    // One entry point per hook class, however many kinds it is declared for.
    let required: BTreeSet<(&str, usize)> = hooks.iter().map(Hook::entry).collect();
    let required: Vec<(&str, usize)> = required.into_iter().collect();
    let script = sandbox
        .compile(&format!("plugin/{name}"), &source, &required)
        .map_err(|e| match e {
            // A missing entry point: say which declared hook needs it.
            ScriptError::Invalid { line: None, .. } => {
                format!("{}: {e}, which its hooks {:?} need", m.script, m.hooks)
            }
            e => format!("{}: {e}", m.script),
        })?;
    Ok(Loaded {
        script,
        hooks,
        adjust: m.adjust,
        config: Dynamic::from_map(table(m.config)),
    })
}

fn read_script(dir: &Path, script: &str) -> Result<String, String> {
    let rel = Path::new(script);
    // The script must live inside the plugin's directory, so a plugin is self-contained
    // and copying its directory copies all of it.
    let inside = !script.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(format!(
            "{MANIFEST}: script = {script:?} must be a file name inside the plugin directory, e.g. \"plugin.rhai\""
        ));
    }
    let path = dir.join(rel);
    std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read the script {} named in {MANIFEST}: {e}",
            path.display()
        )
    })
}

/// " (line L, column C)" of a TOML error, from its byte span.
fn toml_position(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return String::new();
    };
    // `get` rather than indexing: a span off a character boundary must not panic.
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" (line {line}, column {column})")
}

// TOML goes to Rhai directly rather than through JSON: JSON has no datetimes (toml would
// serialize them as a private marker struct) and no NaN or infinity.
fn table(t: toml::Table) -> Map {
    t.into_iter().map(|(k, v)| (k.into(), value(v))).collect()
}

fn value(v: toml::Value) -> Dynamic {
    match v {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => f.into(),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => Dynamic::from_array(a.into_iter().map(value).collect::<Array>()),
        toml::Value::Table(t) => Dynamic::from_map(table(t)),
    }
}
