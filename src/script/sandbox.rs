//! The one Rhai engine every script runs in: OS-init profiles, boot jobs and plugins.
//!
//! A script is untrusted input (users write profiles and boot jobs through the API), so the
//! engine is built once, here, with hard limits and nothing that reaches the host:
//!
//! * **Limits**: operations, call depth, expression depth, string, array and map sizes, and a
//!   wall-clock deadline. The deadline is checked from Rhai's progress callback; the instant
//!   lives in a thread-local because an evaluation runs synchronously on the calling thread,
//!   so one shared `Engine` serves every thread without a lock.
//! * **No host access**: Rhai itself has no file, process, environment or network functions;
//!   module imports are refused (the default resolver would read files), `eval` is disabled,
//!   and `print`/`debug` go to the log under the script's name. The only functions beyond
//!   Rhai's standard library are the guest-scoped constructors in [`super::hostapi`].
//!
//! Every error names the script and, where Rhai knows it, the line and column.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, FuncArgs, Position, Scope, AST};

/// The sandbox's limits. The defaults suit scripts that build a few dozen actions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 256 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            deadline: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScriptError {
    /// The script does not compile, or lacks a function it must define.
    #[error("script {script}: {message}{}", at(*line, *column))]
    Invalid {
        script: String,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The script failed while running (including every limit but the deadline).
    #[error("script {script}: {message}{}", at(*line, *column))]
    Failed {
        script: String,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// The script ran past its wall-clock deadline and was stopped.
    #[error("script {script}: stopped after its {ms} ms deadline")]
    Deadline { script: String, ms: u128 },
    /// The script ran but returned something of the wrong shape.
    #[error("script {script}: {message}")]
    Shape { script: String, message: String },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

impl ScriptError {
    pub fn script(&self) -> &str {
        match self {
            ScriptError::Invalid { script, .. }
            | ScriptError::Failed { script, .. }
            | ScriptError::Deadline { script, .. }
            | ScriptError::Shape { script, .. } => script,
        }
    }

    pub fn shape(script: &str, message: impl Into<String>) -> Self {
        ScriptError::Shape {
            script: script.to_string(),
            message: message.into(),
        }
    }
}

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Marker value the progress callback returns when the deadline passed.
const DEADLINE_TOKEN: &str = "corral:deadline";

/// A compiled script and the name its errors carry.
#[derive(Clone)]
pub struct Script {
    pub name: String,
    pub ast: std::sync::Arc<AST>,
}

pub struct Sandbox {
    engine: Engine,
    limits: Limits,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new(Limits::default())
    }
}

impl Sandbox {
    pub fn new(limits: Limits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_modules(0)
            .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new())
            .disable_symbol("eval")
            .on_print(|s| tracing::info!(target: "corral::script", "{s}"))
            .on_debug(|s, src, pos| {
                tracing::debug!(target: "corral::script", "{} {pos}: {s}", src.unwrap_or(""))
            });
        // Checked every 256 operations: reading the clock on each one costs more than the
        // operations themselves.
        engine.on_progress(|ops| {
            if ops & 0xff != 0 {
                return None;
            }
            let late = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() >= t));
            late.then(|| Dynamic::from(DEADLINE_TOKEN))
        });
        super::hostapi::register(&mut engine);
        Sandbox { engine, limits }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles `source` and checks that it defines each `(function, arity)` in `required`.
    pub fn compile(
        &self,
        name: &str,
        source: &str,
        required: &[(&str, usize)],
    ) -> Result<Script, ScriptError> {
        let ast = self.engine.compile(source).map_err(|e| {
            let (line, column) = pos(e.position());
            ScriptError::Invalid {
                script: name.to_string(),
                message: e.err_type().to_string(),
                line,
                column,
            }
        })?;
        for (f, arity) in required {
            let found = ast
                .iter_functions()
                .any(|m| m.name == *f && m.params.len() == *arity);
            if !found {
                return Err(ScriptError::Invalid {
                    script: name.to_string(),
                    message: format!("must define fn {f} with {arity} parameter(s)"),
                    line: None,
                    column: None,
                });
            }
        }
        Ok(Script {
            name: name.to_string(),
            ast: std::sync::Arc::new(ast),
        })
    }

    /// Calls `function` of `script` under the limits and the deadline.
    pub fn call(
        &self,
        script: &Script,
        function: &str,
        args: impl FuncArgs,
    ) -> Result<Dynamic, ScriptError> {
        let started = Instant::now();
        let previous = DEADLINE.with(|d| d.replace(Some(started + self.limits.deadline)));
        let mut scope = Scope::new();
        let r = self
            .engine
            .call_fn::<Dynamic>(&mut scope, &script.ast, function, args);
        DEADLINE.with(|d| d.set(previous));
        r.map_err(|e| self.runtime_error(&script.name, *e))
    }

    fn runtime_error(&self, script: &str, e: EvalAltResult) -> ScriptError {
        if let EvalAltResult::ErrorTerminated(token, _) = &e {
            if token.clone().into_string().ok().as_deref() == Some(DEADLINE_TOKEN) {
                return ScriptError::Deadline {
                    script: script.to_string(),
                    ms: self.limits.deadline.as_millis(),
                };
            }
        }
        let (line, column) = pos(e.position());
        let message = match &e {
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "stopped after {} operations (the limit)",
                self.limits.max_operations
            ),
            EvalAltResult::ErrorStackOverflow(_) => format!(
                "calls nested deeper than {} levels (the limit)",
                self.limits.max_call_levels
            ),
            EvalAltResult::ErrorDataTooLarge(what, _) => format!(
                "{what} exceeds the sandbox's limit (strings {} bytes, arrays {} items, maps {} entries)",
                self.limits.max_string_size, self.limits.max_array_size, self.limits.max_map_size
            ),
            EvalAltResult::ErrorRuntime(v, _) => format!("threw: {v}"),
            EvalAltResult::ErrorTooManyModules(_) | EvalAltResult::ErrorModuleNotFound(..) => {
                "imports are not allowed: a corral script is one file".to_string()
            }
            other => {
                // Rhai appends " (line L, position C)"; the position is reported separately.
                let mut s = other.to_string();
                if let Some(i) = s.rfind(" (line ") {
                    s.truncate(i);
                }
                s
            }
        };
        ScriptError::Failed {
            script: script.to_string(),
            message,
            line,
            column,
        }
    }
}

fn pos(p: Position) -> (Option<usize>, Option<usize>) {
    (p.line(), p.position())
}
