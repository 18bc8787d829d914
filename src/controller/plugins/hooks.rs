//! The hooks: how each is called, and what its answer may be.
//!
//! Deciding hooks ([`Plugins::score`], [`Plugins::before`]) return the first failure, and the
//! caller's decision fails with it; observing hooks ([`Plugins::after`],
//! [`Plugins::after_step`], [`Plugins::on_event`]) only count and log theirs. A script's
//! answer is checked here, and a wrong shape is a failure of the plugin whose message says
//! which shapes are allowed.

use std::collections::HashMap;

use rhai::{Dynamic, Map};

use super::load::{Hook, Loaded};
use super::{Plugin, PluginError, Plugins, Verdict};

impl Plugins {
    /// One Verdict per node, in order: the sum of every placement plugin's scores, or the
    /// first veto. A plugin that errors or times out: Err (placement of this guest fails,
    /// naming the plugin).
    pub fn score(
        &self,
        request: &serde_json::Value,
        nodes: &[serde_json::Value],
    ) -> Result<Vec<Verdict>, PluginError> {
        let mut verdicts = vec![Verdict::Score(0.0); nodes.len()];
        // Plugins answer by node id; a node without one cannot be named and keeps 0.
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.get("id").and_then(|v| v.as_str()).map(|id| (id, i)))
            .collect();
        let nodes_json = serde_json::Value::Array(nodes.to_vec());
        for (p, l) in self.with(|h| *h == Hook::Placement) {
            let args = (
                p.arg("request", request)?,
                p.arg("nodes", &nodes_json)?,
                l.config.clone(),
            );
            let out = p.call(&self.sandbox, l, "score", args)?;
            let shape = "fn score must return a map of node id to a score (a number, higher is better) or a veto (a string, the reason)";
            let Some(map) = out.clone().try_cast::<Map>() else {
                return Err(p.fail(format!("{shape}; it returned {}", out.type_name())));
            };
            for (id, v) in map {
                let Some(&i) = index.get(id.as_str()) else {
                    // An id that is not a candidate (a typo, or a node the built-in
                    // filters removed) cannot change the outcome.
                    tracing::debug!("plugin {}: score names unknown node {id}", p.name);
                    continue;
                };
                let said = if let Ok(n) = v.as_int() {
                    Ok(n as f64)
                } else if let Ok(f) = v.as_float() {
                    // NaN would make every comparison false and the choice arbitrary.
                    if !f.is_finite() {
                        return Err(p.fail(format!(
                            "{shape}; node {id} got {f}, which is not a finite number"
                        )));
                    }
                    Ok(f)
                } else if v.is_string() {
                    Err(v.to_string())
                } else {
                    return Err(p.fail(format!("{shape}; node {id} got a {}", v.type_name())));
                };
                match (said, &mut verdicts[i]) {
                    // The first veto stands: later plugins cannot score a refused node back.
                    (_, Verdict::Veto { .. }) => {}
                    (Ok(s), Verdict::Score(total)) => *total += s,
                    (Err(reason), v) => {
                        *v = Verdict::Veto {
                            plugin: p.name.clone(),
                            reason,
                        }
                    }
                }
            }
        }
        Ok(verdicts)
    }

    /// Runs every enabled before:<kind>/before:* hook in name order, each seeing the
    /// previous one's adjustments; returns the adjusted request. Reject or script error →
    /// Err. The caller validates the adjusted request as if the user had sent it: a plugin
    /// may only set the fields its manifest lists, but their values are not checked here.
    pub fn before(
        &self,
        kind: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        let mut request = request.clone();
        let matches =
            |h: &Hook| matches!(h, Hook::Before(k) if k.as_deref().is_none_or(|k| k == kind));
        for (p, l) in self.with(matches) {
            let args = (
                Dynamic::from(kind.to_string()),
                p.arg("request", &request)?,
                l.config.clone(),
            );
            let out = p.call(&self.sandbox, l, "before", args)?;
            if out.is_unit() {
                continue;
            }
            let shape = "fn before must return () to allow, #{ reject: \"reason\" } to refuse or #{ set: #{ field: value } } to adjust";
            let Some(map) = out.clone().try_cast::<Map>() else {
                return Err(p.fail(format!("{shape}; it returned {}", out.type_name())));
            };
            if let Some(k) = map.keys().find(|k| !matches!(k.as_str(), "reject" | "set")) {
                return Err(p.fail(format!("{shape}; it returned a map with the key {k:?}")));
            }
            if let Some(reason) = map.get("reject") {
                if !reason.is_string() {
                    return Err(p.fail(format!(
                        "reject must be a string, the reason shown to the user; it was a {}",
                        reason.type_name()
                    )));
                }
                return Err(PluginError::Rejected {
                    plugin: p.name.clone(),
                    reason: reason.to_string(),
                });
            }
            let Some(set) = map.get("set") else { continue };
            let Some(set) = set.clone().try_cast::<Map>() else {
                return Err(p.fail(format!(
                    "set must be a map of field to new value; it was a {}",
                    set.type_name()
                )));
            };
            for (field, value) in set {
                if !l.adjust.iter().any(|a| a == field.as_str()) {
                    return Err(p.fail(format!(
                        "fn before may not set the field {field:?}: plugin.toml's adjust lists {:?}; add it there or stop setting it",
                        l.adjust
                    )));
                }
                let value: serde_json::Value = rhai::serde::from_dynamic(&value).map_err(|e| {
                    p.fail(format!(
                        "the new value of {field:?} cannot become JSON: {e}"
                    ))
                })?;
                let Some(obj) = request.as_object_mut() else {
                    return Err(p.fail(format!(
                        "cannot set {field:?}: the {kind} request is not a JSON object"
                    )));
                };
                obj.insert(field.to_string(), value);
            }
        }
        Ok(request)
    }

    /// Calls an observing hook on every plugin that has it; failures are counted and
    /// logged, never returned, because the work they watch has already happened.
    fn observe(
        &self,
        wants: impl Fn(&Hook) -> bool,
        function: &str,
        args: impl Fn(&Plugin, &Loaded) -> Result<Vec<Dynamic>, PluginError>,
    ) {
        for (p, l) in self.with(wants) {
            let r = args(p, l).and_then(|a| p.call(&self.sandbox, l, function, a));
            if let Err(e) = r {
                tracing::warn!("{e}");
            }
        }
    }

    /// after/after_step/event hooks: errors are counted and logged, never returned.
    pub fn after(&self, kind: &str, op: &serde_json::Value) {
        let wants =
            |h: &Hook| matches!(h, Hook::After(k) if k.as_deref().is_none_or(|k| k == kind));
        self.observe(wants, "after", |p, l| {
            Ok(vec![kind.into(), p.arg("operation", op)?, l.config.clone()])
        });
    }

    pub fn after_step(&self, kind: &str, op: &serde_json::Value, step: &serde_json::Value) {
        self.observe(
            |h| *h == Hook::AfterStep,
            "after_step",
            |p, l| {
                Ok(vec![
                    kind.into(),
                    p.arg("operation", op)?,
                    p.arg("step", step)?,
                    l.config.clone(),
                ])
            },
        );
    }

    pub fn on_event(&self, event: &serde_json::Value) {
        self.observe(
            |h| *h == Hook::Event,
            "on_event",
            |p, l| Ok(vec![p.arg("event", event)?, l.config.clone()]),
        );
    }
}
