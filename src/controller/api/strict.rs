//! Request bodies are checked against the document before any handler sees them.
//!
//! poem-openapi's parsers are lenient where the document is not: a string field takes
//! `false` or `12` and turns it into `"false"` or `"12"`. A client that sends the wrong
//! type has a bug, and corral's rule for bad input is a clear 400 that changes nothing.
//! So each JSON body is walked once against its operation's request schema from the
//! finished document (see `spec`): JSON types, `null` only where `nullable`, required
//! fields, no unknown fields in closed objects. Formats, ranges and enum values are left
//! to the typed parsers and handlers, whose messages are already specific.

use serde_json::Value;

use super::spec::Template;

/// Each operation's request body schema, by path template and method, and whether the
/// operation needs a token (a body is checked only once the caller is known: a request
/// without a valid token gets its 401 first, whatever its body).
pub struct Bodies {
    routes: Vec<(Template, String, Value, bool)>,
    schemas: Value,
}

impl Bodies {
    /// From the finished document; `prefix` is where the API is mounted.
    pub fn of(spec: &str, prefix: &str) -> Self {
        let spec: Value = serde_json::from_str(spec).unwrap_or(Value::Null);
        let mut routes = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let schema = op
                    .pointer("/requestBody/content")
                    .and_then(Value::as_object)
                    .and_then(|c| c.iter().find(|(media, _)| media.contains("json")))
                    .and_then(|(_, m)| m.get("schema"));
                if let Some(schema) = schema {
                    let secured = op.get("security").is_some();
                    routes.push((
                        Template::new(prefix, path),
                        method.to_uppercase(),
                        schema.clone(),
                        secured,
                    ));
                }
            }
        }
        Bodies {
            routes,
            schemas: spec["components"]["schemas"].clone(),
        }
    }

    /// The request schema of `method path`, if it takes a JSON body, and whether the
    /// operation needs a token.
    pub fn schema(&self, method: &str, path: &str) -> Option<(&Value, bool)> {
        self.routes
            .iter()
            .find(|(t, m, _, _)| m == method && t.matches(path))
            .map(|(_, _, s, secured)| (s, *secured))
    }

    /// Checks `value` against `schema`; the error names the field and what it must be.
    pub fn check(&self, value: &Value, schema: &Value) -> Result<(), String> {
        self.walk(value, schema, "")
    }

    /// Checks `value` (found at `at`, empty for the body itself) against `schema`: a
    /// `$ref` is followed, `null` is refused unless the schema is `nullable`, every
    /// `allOf` part must hold, then the JSON type, then array items and object fields.
    fn walk(&self, value: &Value, schema: &Value, at: &str) -> Result<(), String> {
        if let Some(name) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        {
            // A reference the document does not define cannot be checked; the typed
            // parser still sees the body.
            return match self.schemas.get(name) {
                Some(s) => self.walk(value, s, at),
                None => Ok(()),
            };
        }
        if value.is_null() {
            return if schema.get("nullable") == Some(&Value::Bool(true)) {
                Ok(())
            } else {
                Err(format!(
                    "{} must not be null: leave the field out instead",
                    field(at)
                ))
            };
        }
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.walk(value, part, at)?;
        }
        let Some(ty) = schema.get("type").and_then(Value::as_str) else {
            return Ok(());
        };
        if !fits(ty, value) {
            return Err(format!(
                "{} must be {}, not {value}",
                field(at),
                article(ty)
            ));
        }
        if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.walk(item, schema, &format!("{at}[{i}]"))?;
            }
        }
        if let Some(obj) = value.as_object() {
            self.walk_object(obj, schema, at)?;
        }
        Ok(())
    }

    /// Checks an object's fields: every required field first, then each field in turn
    /// against its property schema; a field with no schema is refused only when the
    /// object is closed (`additionalProperties: false`).
    fn walk_object(
        &self,
        obj: &serde_json::Map<String, Value>,
        schema: &Value,
        at: &str,
    ) -> Result<(), String> {
        let props = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(name) {
                return Err(format!("`{}` is required", join(at, name)));
            }
        }
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        for (name, v) in obj {
            match props.and_then(|p| p.get(name)) {
                Some(s) => self.walk(v, s, &join(at, name))?,
                None if closed => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    return Err(format!(
                        "unknown field `{}`; {} takes {}",
                        join(at, name),
                        field(at),
                        known.join(", ")
                    ));
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// How a message names the value at `at`: the body itself, or the field in backticks.
fn field(at: &str) -> String {
    if at.is_empty() {
        "the body".to_string()
    } else {
        format!("`{at}`")
    }
}

/// Whether `value` has the JSON type `ty` names; a type the checker does not know fits.
fn fits(ty: &str, value: &Value) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn article(ty: &str) -> String {
    match ty {
        "integer" | "array" | "object" => format!("an {ty}"),
        _ => format!("a {ty}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bodies() -> Bodies {
        let spec = json!({
            "paths": {"/guests/{id}": {"patch": {"requestBody": {"content": {
                "application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/Up"}}}}}}},
            "components": {"schemas": {
                "Up": {"type": "object", "additionalProperties": false, "required": ["cpus"],
                       "properties": {"hostname": {"type": "string", "nullable": true},
                                      "cpus": {"type": "integer"},
                                      "keys": {"type": "array", "items": {"type": "string"}}}}}}
        });
        Bodies::of(&spec.to_string(), "/api/v1")
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_refused_with_the_field_named() {
        let b = bodies();
        let s = b.schema("PATCH", "/api/v1/guests/web-1").unwrap().0.clone();
        assert!(b.schema("GET", "/api/v1/guests/web-1").is_none());
        assert!(b.check(&json!({"cpus": 2, "hostname": "db"}), &s).is_ok());
        assert!(b.check(&json!({"cpus": 2, "hostname": null}), &s).is_ok());
        let refusals = [
            (
                json!({"cpus": 2, "hostname": false}),
                "`hostname` must be a string, not false",
            ),
            (json!({"cpus": "2"}), "`cpus` must be an integer, not \"2\""),
            (json!({"hostname": "db"}), "`cpus` is required"),
            (
                json!({"cpus": 1, "keys": ["a", 3]}),
                "`keys[1]` must be a string, not 3",
            ),
            (
                json!({"cpus": 1, "cpu": 2}),
                "unknown field `cpu`; the body takes",
            ),
            (json!([1]), "the body must be an object"),
        ];
        for (body, want) in refusals {
            let got = b.check(&body, &s).unwrap_err();
            assert!(got.starts_with(want), "{body}: {got}");
        }
    }
}
