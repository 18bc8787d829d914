//! The one minijinja environment: domain XML and the cloud-init NoCloud documents.
//!
//! Templates ship inside the binary (from `jobs/templates/`) so a node needs no files to
//! work; an operator may point `templates_dir` at a directory of their own and any file
//! found there replaces the built-in one of the same name. Undefined variables are errors
//! (strict mode): a typo in a template fails the step loudly instead of producing XML
//! with an empty attribute.

use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

/// Built-in templates, keyed by the name steps render them by.
const BUILTIN: &[(&str, &str)] = &[
    (
        "domain.xml",
        include_str!("../jobs/templates/domain.xml.j2"),
    ),
    ("meta-data", include_str!("../jobs/templates/meta-data.j2")),
    ("user-data", include_str!("../jobs/templates/user-data.j2")),
    (
        "network-config",
        include_str!("../jobs/templates/network-config.j2"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("reading template override {path}: {source}")]
    Override {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A ready environment. Cheap to share behind an `Arc`.
pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// Builds the environment from the built-ins, replaced by files in `override_dir`
    /// named `<name>.j2` when present.
    pub fn new(override_dir: Option<&Path>) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".xml") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        for (name, builtin) in BUILTIN {
            let source = match override_dir.map(|d| d.join(format!("{name}.j2"))) {
                Some(path) if path.exists() => std::fs::read_to_string(&path)
                    .map_err(|source| RenderError::Override { path, source })?,
                _ => (*builtin).to_string(),
            };
            env.add_template_owned(name.to_string(), source)
                .map_err(|source| RenderError::Template {
                    name: name.to_string(),
                    source,
                })?;
        }
        Ok(Renderer { env })
    }

    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String, RenderError> {
        let wrap = |source| RenderError::Template {
            name: name.to_string(),
            source,
        };
        let tmpl = self.env.get_template(name).map_err(wrap)?;
        tmpl.render(val(&ctx)).map_err(wrap)
    }
}

/// A serde value as a template value.
pub fn val<T: Serialize>(t: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(t))
}
