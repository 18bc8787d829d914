//! How the CLI prints: tables for people (the default), JSON or YAML for scripts
//! (`-o json|yaml`), always the API's own field names in the latter two.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// `-o`: the output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// `s` with every control character but newline and tab written as an escape (`\x1b`,
/// `\u{9b}`): a value from the server (a name, a stage, an error, an audit row, a
/// script) may be someone else's, and must not drive the reader's terminal (move the
/// cursor, retitle the window, hide what follows).
pub fn printable(s: &str) -> String {
    escape(s, |c| c.is_control() && c != '\n' && c != '\t')
}

/// [`printable`] for one line: newlines and tabs are escaped too.
pub fn printable_line(s: &str) -> String {
    escape(s, char::is_control)
}

fn escape(s: &str, bad: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if bad(c) {
            match u32::from(c) {
                n @ 0..=0xff => {
                    let _ = write!(out, "\\x{n:02x}");
                }
                n => {
                    let _ = write!(out, "\\u{{{n:x}}}");
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Rows under a header; columns are padded to their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; every cell is made [`printable_line`].
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|c| printable_line(c)).collect());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<String>| {
            let n = cells.len();
            for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
                if i + 1 == n {
                    out.push_str(&c);
                } else {
                    let _ = write!(out, "{c:<w$}  ");
                }
            }
            out.push('\n');
        };
        line(
            &mut out,
            self.headers.iter().map(|h| h.to_uppercase()).collect(),
        );
        for r in &self.rows {
            line(&mut out, r.clone());
        }
        out
    }
}

/// Prints `value` in the chosen format; `table` builds the table only when one is wanted.
pub fn emit<T: Serialize>(out: Output, value: &T, table: impl FnOnce() -> Table) {
    match out {
        Output::Table => print!("{}", table().render()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Yaml => print!(
            "{}",
            yaml(&serde_json::to_value(value).unwrap_or(Value::Null))
        ),
    }
}

/// Prints one record: `key: value` lines as a table, or the whole record as JSON / YAML.
pub fn emit_record<T: Serialize>(out: Output, value: &T) {
    emit(out, value, || {
        let mut t = Table::new(&["field", "value"]);
        if let Ok(Value::Object(m)) = serde_json::to_value(value) {
            for (k, v) in m {
                record_rows(&mut t, "", k, &v);
            }
        }
        t
    });
}

/// One field as rows: a plain value on its own row; a nested record as its name, then
/// its fields indented under it; a list of records as one `-` entry per record (the
/// disks of `guest show`), never a JSON cell.
fn record_rows(t: &mut Table, indent: &str, key: String, v: &Value) {
    let deeper = format!("{indent}  ");
    match v {
        Value::Object(m) if !m.is_empty() => {
            t.row(vec![format!("{indent}{key}"), String::new()]);
            for (k, v) in m {
                record_rows(t, &deeper, k.clone(), v);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object()) => {
            t.row(vec![format!("{indent}{key}"), String::new()]);
            for item in a {
                match item {
                    Value::Object(m) => {
                        for (i, (k, v)) in m.iter().enumerate() {
                            let mark = if i == 0 { "- " } else { "  " };
                            record_rows(t, &format!("{deeper}{mark}"), k.clone(), v);
                        }
                    }
                    other => record_rows(t, &deeper, "-".into(), other),
                }
            }
        }
        _ => {
            // One line per field: a multi-line value (a script's source) shows its first
            // line; `-o json` or `-o yaml` gives all of it.
            let c = cell(v);
            let c = match c.split_once('\n') {
                Some((first, _)) => format!("{first} …"),
                None => c,
            };
            t.row(vec![format!("{indent}{key}"), c]);
        }
    }
}

/// A JSON value as one table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// A description's first sentence (up to its first `:` or `.`), at most 72 characters:
/// the full text is in `show`.
pub fn first_sentence(text: &str) -> String {
    let end = text.find(['.', ':']).unwrap_or(text.len());
    let s = text[..end].trim();
    if s.chars().count() > 72 {
        format!("{}…", s.chars().take(71).collect::<String>())
    } else {
        s.to_string()
    }
}

/// An optional value as a cell.
pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), |x| x.to_string())
}

/// How long ago an RFC 3339 time was: `45s`, `12m`, `3h`, `5d`.
pub fn age(at: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(at.trim_end_matches('Z')) else {
        return "-".into();
    };
    let secs = std::time::SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Memory in MiB for people: `512MiB`, `2GiB`, `1.5GiB`.
pub fn mib(m: u64) -> String {
    if m >= 1024 && m.is_multiple_of(1024) {
        format!("{}GiB", m / 1024)
    } else if m >= 1024 {
        format!("{:.1}GiB", m as f64 / 1024.0)
    } else {
        format!("{m}MiB")
    }
}

/// Block-style YAML for a JSON value. Strings are written double-quoted (JSON's escaping is
/// valid YAML), so no value can be misread as a number, a boolean or a null.
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_into(&mut out, v, 0);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !k.starts_with(|c: char| c.is_ascii_digit() || c == '-');
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn yaml_into(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                match x {
                    Value::Object(o) if !o.is_empty() => {
                        let _ = writeln!(out, "{pad}{}:", key(k));
                        yaml_into(out, x, indent + 2);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}{}:", key(k));
                        yaml_into(out, x, indent);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{}: {}", key(k), flow(x));
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for x in a {
                match x {
                    Value::Object(o) if !o.is_empty() => {
                        let mut inner = String::new();
                        yaml_into(&mut inner, x, indent + 2);
                        // The first key goes on the dash's line.
                        let body = inner.trim_start();
                        let _ = write!(out, "{pad}- {body}");
                    }
                    Value::Array(b) if !b.is_empty() => {
                        let _ = writeln!(out, "{pad}-");
                        yaml_into(out, x, indent + 2);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", flow(x));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", flow(other));
        }
    }
}

/// Empty containers and scalars, inline.
fn flow(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_records_are_indented_rows_not_json_cells() {
        let mut t = Table::new(&["field", "value"]);
        let disks =
            json!([{"kind": "system", "path": "/d/a.qcow2"}, {"kind": "seed", "path": "/d/a.iso"}]);
        record_rows(&mut t, "", "name".into(), &json!("web-1"));
        record_rows(&mut t, "", "disks".into(), &disks);
        let out = t.render();
        assert!(!out.contains('{'), "{out}");
        for want in ["disks", "  - kind", "    path", "system", "/d/a.iso"] {
            assert!(out.contains(want), "{want}: {out}");
        }
    }

    #[test]
    fn yaml_is_block_style_and_quotes_every_string() {
        let v = json!([{"name": "web-1", "cpus": 2, "ip": null, "tags": ["a"], "disk": {"size": "1"}, "e": []}]);
        assert_eq!(
            yaml(&v),
            "- cpus: 2\n  disk:\n    size: \"1\"\n  e: []\n  ip: null\n  name: \"web-1\"\n  tags:\n  - \"a\"\n"
        );
    }

    #[test]
    fn values_cannot_drive_the_terminal() {
        let evil = "web\x1b]0;pwned\x07\x1b[2J\u{9b}31m\nok\tx";
        assert_eq!(
            printable_line(evil),
            "web\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x0aok\\x09x"
        );
        assert_eq!(printable("a\nb\x1b"), "a\nb\\x1b");
        let mut t = Table::new(&["name"]);
        t.row(vec![evil.into()]);
        assert!(!t.render().contains('\x1b'), "{}", t.render());
    }

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let mut t = Table::new(&["name", "state"]);
        t.row(vec!["web-1".into(), "running".into()]);
        t.row(vec!["db".into(), "shutoff".into()]);
        assert_eq!(t.render(), "NAME   STATE\nweb-1  running\ndb     shutoff\n");
    }

    #[test]
    fn sizes_and_ages_read_as_people_write_them() {
        assert_eq!(mib(512), "512MiB");
        assert_eq!(mib(2048), "2GiB");
        assert_eq!(mib(1536), "1.5GiB");
        assert_eq!(age("not a time"), "-");
        assert!(age(&corral::model::rfc3339(corral::model::now_ms() - 90_000)).ends_with('s'));
    }
}
