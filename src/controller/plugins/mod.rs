//! Plugins: Rhai scripts an administrator drops into the plugins directory to steer
//! placement, check or adjust requests, and watch operations and events.
//!
//! The flow:
//!
//! 1. **Load** ([`Plugins::load`], once at start): every directory `<dir>/<name>/` is one
//!    plugin, described by its `plugin.toml` (see `plugins/README.md`). Loading never
//!    fails: a plugin that does not load is kept, with state "error" and the message, so
//!    the plugin list shows what to fix; it never runs. Only the plugins named in the
//!    controller's `plugins` setting run; the others are listed as "disabled" (they are
//!    still checked, so a plugin can be fixed before it is enabled).
//! 2. **Validate** ([`load`]): the manifest parses and names its own directory, every hook
//!    is known, the script compiles in the shared [`Sandbox`] and defines each entry point
//!    its hooks need with the right number of parameters.
//! 3. **Hooks**: the controller calls [`Plugins::score`] while placing a guest,
//!    [`Plugins::before`] before it accepts an operation, and [`Plugins::after`],
//!    [`Plugins::after_step`] and [`Plugins::on_event`] as work finishes. Plugins run in
//!    name order. Every call runs synchronously on the caller's thread under the sandbox's
//!    limits; its deadline is the hook timeout.
//! 4. **Errors**: a hook that decides something (`score`, `before`) fails the decision —
//!    corral does not guess what a broken policy meant — and the error names the plugin. A
//!    hook that only observes (`after`, `after_step`, `on_event`) cannot stop anything: its
//!    errors are counted, kept as `last_error` and logged. Every failure, either way, is
//!    counted in the plugin's `failures`.

mod hooks;
mod load;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rhai::{Dynamic, FuncArgs};

use crate::script::{Limits, Sandbox, ScriptError};
use load::{Hook, Loaded};

/// One plugin as the API lists it.
#[derive(Debug, Clone, serde::Serialize, poem_openapi::Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The hooks its `plugin.toml` declares.
    pub hooks: Vec<String>,
    /// "enabled", "disabled" (present but not listed in the controller's `plugins`
    /// setting) or "error" (failed to load; see `error`).
    pub state: String,
    /// Why the plugin failed to load, when its state is "error".
    pub error: Option<String>,
    /// Hook calls since the controller started.
    pub calls: u64,
    /// Hook calls that failed (script error, deadline, wrong return value).
    pub failures: u64,
    /// The latest failure's message.
    pub last_error: Option<String>,
}

/// What placement plugins say about one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The sum of every placement plugin's score; higher is better.
    Score(f64),
    /// The first plugin (in name order) that refused the node, and why.
    Veto { plugin: String, reason: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PluginError {
    /// A `before` hook refused the request; the reason is the plugin's, for the user.
    #[error("plugin {plugin}: refused: {reason}")]
    Rejected { plugin: String, reason: String },
    /// A hook failed: the script errored, ran past its deadline or returned something of
    /// the wrong shape.
    #[error("plugin {plugin}: {message}")]
    Failed { plugin: String, message: String },
}

impl PluginError {
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Rejected { plugin, .. } | PluginError::Failed { plugin, .. } => plugin,
        }
    }
}

enum State {
    Enabled(Loaded),
    Disabled,
    Error(String),
}

struct Plugin {
    name: String,
    version: String,
    description: String,
    hooks: Vec<String>,
    state: State,
    calls: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Plugin {
    fn new(name: &str, header: load::Header, state: State) -> Self {
        Plugin {
            name: name.to_string(),
            version: header.version,
            description: header.description,
            hooks: header.hooks,
            state,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Records a failure and returns it as the error the caller reports.
    fn fail(&self, message: String) -> PluginError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means another thread panicked mid-assignment of a string;
        // the slot is still usable.
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.clone());
        PluginError::Failed {
            plugin: self.name.clone(),
            message,
        }
    }

    /// Calls `function` of the plugin's script, counting the call and any failure.
    fn call(
        &self,
        sandbox: &Sandbox,
        loaded: &Loaded,
        function: &str,
        args: impl FuncArgs,
    ) -> Result<Dynamic, PluginError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        sandbox
            .call(&loaded.script, function, args)
            .map_err(|e| {
                let fix = match e {
                    ScriptError::Deadline { .. } => {
                        "make the hook faster, or raise the controller's script_deadline_ms"
                    }
                    _ => "fix the plugin's script",
                };
                self.fail(format!(
                    "fn {function} failed: {e}; {fix}, or remove {} from the controller's plugins setting",
                    self.name
                ))
            })
    }

    /// Converts a JSON argument for the script. Failing here is corral's fault, not the
    /// plugin's, but the call cannot happen, so it counts as the plugin's failure too.
    fn arg(&self, what: &str, v: &serde_json::Value) -> Result<Dynamic, PluginError> {
        rhai::serde::to_dynamic(v)
            .map_err(|e| self.fail(format!("cannot pass the {what} to the script: {e}")))
    }
}

/// The loaded plugins and the one sandbox all their scripts run in.
pub struct Plugins {
    sandbox: Sandbox,
    /// Sorted by name: hooks run, and the list shows, in this order.
    plugins: Vec<Plugin>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.plugins.iter().map(|p| (&p.name, state_name(&p.state))))
            .finish()
    }
}

fn state_name(s: &State) -> &'static str {
    match s {
        State::Enabled(_) => "enabled",
        State::Disabled => "disabled",
        State::Error(_) => "error",
    }
}

impl Plugins {
    /// No plugins: every hook is a no-op and placement keeps its built-in order.
    pub fn none() -> Self {
        Plugins {
            sandbox: Sandbox::new(Limits::default()),
            plugins: Vec::new(),
        }
    }

    /// Scans `dir` (missing dir = no plugins). Never fails: a plugin that does not load
    /// (bad TOML, name mismatch, script missing, compile error, missing function for a
    /// declared hook, unknown hook) is kept with state "error" and its message; it never
    /// runs. Only plugins named in `enabled` run; an `enabled` name with no directory is
    /// logged and listed with state "error".
    pub fn load(dir: &Path, enabled: &[String], limits: Limits) -> Self {
        let sandbox = Sandbox::new(limits);
        let mut names = Vec::new();
        // Why the directory could not be listed, for the enabled plugins it hides.
        let mut unreadable = None;
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    // `is_dir` follows symlinks: linking a plugin in is a way to enable
                    // one kept elsewhere.
                    if !path.is_dir() {
                        continue;
                    }
                    match entry.file_name().into_string() {
                        Ok(n) if n.starts_with('.') => {}
                        Ok(n) => names.push(n),
                        Err(n) => tracing::warn!(
                            "plugins: skipping {}: the directory name is not UTF-8; rename it",
                            dir.join(n).display()
                        ),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("plugins: cannot read {}: {e}", dir.display());
                unreadable = Some(e.to_string());
            }
        }
        names.sort();

        let mut plugins = Vec::new();
        for name in &names {
            let on = enabled.contains(name);
            let (header, loaded) = load::load(&sandbox, &dir.join(name), name);
            let state = match loaded {
                Ok(l) if on => {
                    tracing::info!("plugin {name} {}: enabled", header.version);
                    State::Enabled(l)
                }
                Ok(_) => State::Disabled,
                Err(e) => {
                    if on {
                        tracing::warn!("plugin {name}: not loaded, so it will not run: {e}");
                    } else {
                        tracing::info!("plugin {name} (disabled) would not load: {e}");
                    }
                    State::Error(e)
                }
            };
            plugins.push(Plugin::new(name, header, state));
        }
        for name in enabled {
            if plugins.iter().any(|p| &p.name == name) {
                continue;
            }
            let message = match &unreadable {
                Some(e) => format!(
                    "cannot read the plugins directory {}: {e}; let the controller read it",
                    dir.display()
                ),
                None => format!(
                    "not found in {}: add the directory {name} with a {}, or remove {name} from the controller's plugins setting",
                    dir.display(),
                    load::MANIFEST
                ),
            };
            tracing::warn!("plugin {name}: {message}");
            plugins.push(Plugin::new(
                name,
                load::Header::default(),
                State::Error(message),
            ));
        }
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        Plugins { sandbox, plugins }
    }

    pub fn list(&self) -> Vec<PluginInfo> {
        self.plugins
            .iter()
            .map(|p| PluginInfo {
                name: p.name.clone(),
                version: p.version.clone(),
                description: p.description.clone(),
                hooks: p.hooks.clone(),
                state: state_name(&p.state).to_string(),
                error: match &p.state {
                    State::Error(e) => Some(e.clone()),
                    _ => None,
                },
                calls: p.calls.load(Ordering::Relaxed),
                failures: p.failures.load(Ordering::Relaxed),
                last_error: p
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            })
            .collect()
    }

    /// The enabled plugins with a hook `wants`, in name order.
    fn with<'a>(
        &'a self,
        wants: impl Fn(&Hook) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a Plugin, &'a Loaded)> + 'a {
        self.plugins.iter().filter_map(move |p| match &p.state {
            State::Enabled(l) if l.hooks.iter().any(&wants) => Some((p, l)),
            _ => None,
        })
    }

    /// Whether any plugin runs (cheap: no allocation, checked on every saga step).
    pub fn active(&self) -> bool {
        self.with(|_| true).next().is_some()
    }

    pub fn has_placement(&self) -> bool {
        self.with(|h| *h == Hook::Placement).next().is_some()
    }
}
