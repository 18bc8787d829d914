//! The OpenAPI document as clients get it: poem-openapi's, with three corrections that
//! its derive macros cannot express, so that what the document says is what the server
//! does.
//!
//! 1. **Request bodies are closed.** Every request object refuses unknown fields (a typo
//!    must not be silently ignored), so its schema says `additionalProperties: false`.
//! 2. **`null` only where it means something.** An absent value is left out, in requests
//!    and responses alike (every response object is `skip_serializing_if_is_none`). The
//!    fields of [`NULL_MEANS`], where `null` asks for something (`PATCH /templates/{id}`
//!    with `"os_init_profile": null` returns to the default), are declared `nullable`;
//!    elsewhere a `null` is refused with a 400 saying to leave the field out (see
//!    `strict`). Generated SDKs thus get plain optional fields, not optional-of-optional.
//! 3. **The event stream is described event by event.** poem-openapi writes `type: array,
//!    format: event-stream`; what arrives is a sequence of server-sent events whose
//!    `data` is one `EventItem` as JSON, so the schema describes one such event.
//!
//! 4. **Path parameters are never empty.** `/guests//ip` is not `PUT /guests/{id}/ip` with
//!    an empty id: the URL collapses into another route. So string path parameters say
//!    `minLength: 1`.
//!
//! Both `/openapi.json` and `openapi/corral.json` are this document.

use serde_json::{json, Map, Value};

/// Request fields where `null` is a value (schema, field): "back to the default", or
/// "clear it".
pub const NULL_MEANS: &[(&str, &str)] = &[
    ("UpdateTemplate", "os_init_profile"),
    ("UpdateTemplate", "description"),
];

/// The corrected document, pretty-printed.
pub fn finish(raw: &str) -> String {
    let Ok(mut spec) = serde_json::from_str::<Value>(raw) else {
        // poem-openapi wrote it; unparsable would be a bug there, and the raw text is
        // still the best description available.
        return raw.to_string();
    };
    close_requests(&mut spec);
    describe_events(&mut spec);
    non_empty_path_params(&mut spec);
    serde_json::to_string_pretty(&spec).unwrap_or_else(|_| raw.to_string())
}

/// The component schemas reachable from any request body.
fn request_schemas(spec: &Value) -> Vec<String> {
    fn walk(v: &Value, comps: &Map<String, Value>, seen: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(name) = m
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                {
                    if !seen.iter().any(|s| s == name) {
                        seen.push(name.to_string());
                        if let Some(schema) = comps.get(name) {
                            walk(schema, comps, seen);
                        }
                    }
                }
                m.values().for_each(|x| walk(x, comps, seen));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, comps, seen)),
            _ => {}
        }
    }
    let empty = Map::new();
    let comps = spec["components"]["schemas"].as_object().unwrap_or(&empty);
    let mut seen = Vec::new();
    for item in spec["paths"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
    {
        for op in item.as_object().into_iter().flat_map(|o| o.values()) {
            if let Some(body) = op.get("requestBody") {
                walk(body, comps, &mut seen);
            }
        }
    }
    seen
}

fn close_requests(spec: &mut Value) {
    for name in request_schemas(spec) {
        let Some(schema) = spec["components"]["schemas"]
            .get_mut(&name)
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            continue;
        }
        let required: Vec<String> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        schema.insert("additionalProperties".into(), Value::Bool(false));
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            for (field, prop) in props.iter_mut() {
                let optional = !required.contains(field);
                let null_means = NULL_MEANS.contains(&(name.as_str(), field.as_str()));
                if let Some(prop) = prop.as_object_mut() {
                    if optional && null_means {
                        // A `$ref` admits no siblings in OpenAPI 3.0: wrap it.
                        if let Some(r) = prop.remove("$ref") {
                            prop.insert("allOf".into(), json!([{ "$ref": r }]));
                        }
                        prop.insert("nullable".into(), Value::Bool(true));
                    }
                }
            }
        }
    }
}

fn describe_events(spec: &mut Value) {
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let Some(media) = op
                .pointer_mut("/responses/200/content/text~1event-stream")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let item_ref = media
                .get("schema")
                .and_then(|s| s.pointer("/items/$ref"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let name = item_ref.rsplit('/').next().unwrap_or("");
            media.insert(
                "schema".into(),
                json!({
                    "type": "object",
                    "description": format!(
                        "One server-sent event: `id` is its sequence number (send it back as \
                         `Last-Event-ID` to resume), `event` its kind, `data` one {name} as JSON."
                    ),
                    "required": ["data"],
                    "properties": {
                        "id": { "type": "string" },
                        "event": { "type": "string" },
                        "data": { "type": "string", "description": format!("A {name}, as JSON.") },
                        "retry": { "type": "integer" }
                    }
                }),
            );
        }
    }
}

fn non_empty_path_params(spec: &mut Value) {
    let Some(paths) = spec["paths"].as_object_mut() else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        for param in op
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if param["in"] == "path" && param["schema"]["type"] == "string" {
                if let Some(schema) = param["schema"].as_object_mut() {
                    schema.insert("minLength".into(), json!(1));
                }
            }
        }
    }
}

/// A path of the document (`/guests/{id}`) under the API's mount point, matched segment by
/// segment against request paths; a `{parameter}` matches any non-empty segment.
pub struct Template(Vec<String>);

impl Template {
    pub fn new(prefix: &str, path: &str) -> Self {
        Template(
            format!("{prefix}{path}")
                .split('/')
                .map(String::from)
                .collect(),
        )
    }

    pub fn matches(&self, path: &str) -> bool {
        let got: Vec<&str> = path.split('/').collect();
        self.0.len() == got.len()
            && self
                .0
                .iter()
                .zip(&got)
                .all(|(w, g)| w == g || (w.starts_with('{') && !g.is_empty()))
    }

    /// The segment of `path` in the template's first `{parameter}`.
    pub fn first_param(&self, path: &str) -> Option<String> {
        self.0
            .iter()
            .zip(path.split('/'))
            .find(|(w, _)| w.starts_with('{'))
            .map(|(_, g)| g.to_string())
    }
}

/// The methods each path of the document answers, for the `Allow` header that RFC 9110
/// requires on a 405.
pub struct Methods(Vec<(Template, String)>);

impl Methods {
    /// From the finished document; `prefix` is where the API is mounted (`/api/v1`).
    pub fn of(spec: &str, prefix: &str) -> Self {
        let spec: Value = serde_json::from_str(spec).unwrap_or(Value::Null);
        let mut out = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            let methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .map(|m| m.to_uppercase())
                .collect();
            out.push((Template::new(prefix, path), methods.join(", ")));
        }
        Methods(out)
    }

    /// The `Allow` value for a request path, if the path is one of the document's.
    pub fn allow(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(t, _)| t.matches(path))
            .map(|(_, m)| m.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_template_matches_its_paths_and_names_its_methods() {
        let spec = r#"{"paths": {"/guests": {"get": {}, "post": {}},
            "/guests/{id}": {"get": {}, "patch": {}, "delete": {}},
            "/guests/{id}/actions/{action}": {"post": {}}}}"#;
        let m = Methods::of(spec, "/api/v1");
        assert_eq!(m.allow("/api/v1/guests"), Some("GET, POST"));
        assert_eq!(m.allow("/api/v1/guests/web-1"), Some("DELETE, GET, PATCH"));
        assert_eq!(m.allow("/api/v1/guests/web-1/actions/start"), Some("POST"));
        assert_eq!(m.allow("/api/v1/guests/"), None);
        assert_eq!(m.allow("/api/v1/nothing"), None);
    }

    #[test]
    fn request_objects_are_closed_and_null_is_declared_only_where_it_means_something() {
        let raw = r##"{"paths": {"/t": {"post": {"requestBody": {"content": {"application/json":
            {"schema": {"$ref": "#/components/schemas/UpdateTemplate"}}}}}}},
            "components": {"schemas": {
              "UpdateTemplate": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "os_init_profile": {"type": "string"},
                "note": {"type": "string"},
                "tags": {"type": "array", "default": []},
                "rate": {"$ref": "#/components/schemas/Rate"}}},
              "Rate": {"type": "object", "properties": {"bps": {"type": "integer"}}},
              "Answer": {"type": "object", "properties": {"x": {"type": "string"}}}}}}"##;
        let spec: Value = serde_json::from_str(&finish(raw)).unwrap();
        let s = &spec["components"]["schemas"];
        let t = &s["UpdateTemplate"];
        assert_eq!(t["additionalProperties"], false);
        assert_eq!(
            s["Rate"]["additionalProperties"], false,
            "nested request object"
        );
        assert!(
            s["Answer"].get("additionalProperties").is_none(),
            "response object"
        );
        assert_eq!(t["properties"]["os_init_profile"]["nullable"], true);
        for plain in ["name", "note", "tags", "rate"] {
            assert!(t["properties"][plain].get("nullable").is_none(), "{plain}");
        }
    }
}
