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
    (
        "interface.xml",
        include_str!("../jobs/templates/interface.xml.j2"),
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
        // Files end with a newline, as every tool reading them expects.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(|source| RenderError::Template {
                name: "syntax".into(),
                source,
            })?;
        env.set_syntax(syntax);
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

/// Compares rendered text with `tests/golden/<name>`; `CORRAL_BLESS=1` rewrites the file.
#[cfg(test)]
pub fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("CORRAL_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("golden {path}: {e}"));
    assert_eq!(actual, expected, "rendered {name} differs from {path}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DomainSpec;

    fn spec(windows: bool) -> DomainSpec {
        DomainSpec {
            guest_id: "6f1c2a8e-0000-4000-8000-000000000001".into(),
            name: "web-1".into(),
            cpus: 2,
            memory_mib: 512,
            max_cpus: 0,
            max_memory_mib: 0,
            windows,
            disk_path: "/var/lib/corral/images/g.qcow2".into(),
            seed_path: "/var/lib/corral/images/g-seed.iso".into(),
            mac: "52:54:00:12:34:56".into(),
            bridge: "corral0".into(),
            bandwidth: Some(crate::model::Bandwidth {
                inbound: Some(crate::model::Rate {
                    average_kbps: 1000,
                    peak_kbps: Some(2000),
                    burst_kb: Some(512),
                }),
                outbound: Some(crate::model::Rate {
                    average_kbps: 500,
                    peak_kbps: None,
                    burst_kb: None,
                }),
            }),
            vlan: None,
            vnc_port: 5901,
            ha: false,
        }
    }

    fn domain(spec: &DomainSpec, domain_type: &str) -> String {
        Renderer::new(None)
            .unwrap()
            .render(
                "domain.xml",
                minijinja::context! {
                    spec => val(spec), domain_type => domain_type, machine => "pc",
                    vnc_listen => "127.0.0.1", tcg_cache_mib => 32, emulator => None::<String>,
                    vnc_password => "pa<ss>&\"'",
                },
            )
            .unwrap()
    }

    #[test]
    fn kvm_linux_domain_matches_golden() {
        let xml = domain(&spec(false), "kvm");
        assert!(xml.contains("host-passthrough") && xml.contains("offset='utc'"));
        golden("domain-kvm-linux.xml", &xml);
    }

    #[test]
    fn tcg_windows_domain_matches_golden() {
        let xml = domain(&spec(true), "qemu");
        // TCG rejects host-passthrough; Windows keeps local time (S38, S55).
        assert!(!xml.contains("host-passthrough"));
        assert!(xml.contains("offset='localtime'") && xml.contains("<tb-cache"));
        assert!(xml.contains("pa&lt;ss&gt;&amp;"), "secrets are escaped");
        golden("domain-tcg-windows.xml", &xml);
    }

    #[test]
    fn maxima_above_the_size_leave_room_for_live_growth() {
        let mut s = spec(false);
        s.max_cpus = 4;
        s.max_memory_mib = 2048;
        let xml = domain(&s, "qemu");
        assert!(xml.contains("<vcpu current='2'>4</vcpu>"), "{xml}");
        assert!(xml.contains("<memory unit='MiB'>2048</memory>"), "{xml}");
        assert!(
            xml.contains("<currentMemory unit='MiB'>512</currentMemory>"),
            "{xml}"
        );
        // A maximum below the size is the size.
        s.max_cpus = 1;
        s.max_memory_mib = 0;
        let xml = domain(&s, "qemu");
        assert!(xml.contains("<vcpu>2</vcpu>"), "{xml}");
        assert!(xml.contains("<memory unit='MiB'>512</memory>"), "{xml}");
    }

    #[test]
    fn strict_mode_rejects_missing_variables() {
        let r = Renderer::new(None).unwrap();
        let err = r.render(
            "domain.xml",
            minijinja::context! { spec => val(spec(false)) },
        );
        assert!(err.is_err());
    }
}
