use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins");

fn shipped(enabled: &[&str]) -> Plugins {
    let enabled: Vec<String> = enabled.iter().map(|s| s.to_string()).collect();
    Plugins::load(Path::new(SHIPPED), &enabled, Limits::default())
}

fn info(p: &Plugins, name: &str) -> PluginInfo {
    p.list()
        .into_iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("{name} is not listed"))
}

/// Writes a plugin directory: `plugin.toml` from `manifest` and `plugin.rhai` from `script`.
fn write(dir: &Path, name: &str, manifest: &str, script: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("plugin.toml"), manifest).unwrap();
    std::fs::write(d.join("plugin.rhai"), script).unwrap();
    d
}

fn manifest(name: &str, hooks: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"test\"\nscript = \"plugin.rhai\"\nhooks = {hooks}\n"
    )
}

fn load(dir: &Path, enabled: &[&str]) -> Plugins {
    let enabled: Vec<String> = enabled.iter().map(|s| s.to_string()).collect();
    let limits = Limits {
        max_operations: 0, // unlimited: the deadline alone must stop a runaway script
        deadline: Duration::from_millis(100),
        ..Limits::default()
    };
    Plugins::load(dir, &enabled, limits)
}

fn node(id: &str, free: i64) -> serde_json::Value {
    json!({
        "id": id, "memory_mib": 8192, "used_memory_mib": 8192 - free,
        "free_memory_mib": free, "cpus": 4, "used_vcpus": 2, "guests": 1, "load1": 0.3,
    })
}

#[test]
fn plugins_are_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Plugins>();
}

#[test]
fn shipped_plugins_load() {
    let p = shipped(&["spread-by-free-memory", "naming-policy"]);
    let list = p.list();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["naming-policy", "spread-by-free-memory"]);
    for i in &list {
        assert_eq!(i.state, "enabled", "{i:?}");
        assert_eq!(i.error, None);
        assert_eq!(i.version, "1.0.0");
        assert!(!i.description.is_empty());
    }
    assert!(p.has_placement());
    assert!(!shipped(&["naming-policy"]).has_placement());
    assert_eq!(
        info(&shipped(&[]), "naming-policy").state,
        "disabled",
        "present but not enabled"
    );
}

#[test]
fn spread_scores_by_memory_left_and_vetoes_below_minimum() {
    let p = shipped(&["spread-by-free-memory"]);
    let request = json!({"name": "web-1", "cpus": 2, "memory_mib": 1024});
    let nodes = [node("a", 4096), node("b", 2048), node("c", 1200)];
    let v = p.score(&request, &nodes).unwrap();
    assert_eq!(v[0], Verdict::Score(3072.0));
    assert_eq!(v[1], Verdict::Score(1024.0));
    // 1200 - 1024 = 176 MiB left, below the shipped min_free_mib of 256.
    let Verdict::Veto { plugin, reason } = &v[2] else {
        panic!("c should be vetoed: {v:?}");
    };
    assert_eq!(plugin, "spread-by-free-memory");
    for n in ["1200", "176", "1024", "256", "min_free_mib"] {
        assert!(reason.contains(n), "{reason}");
    }
    assert_eq!(info(&p, "spread-by-free-memory").calls, 1);

    // Without placement plugins every node scores 0.
    let none = Plugins::none();
    assert!(!none.has_placement());
    assert_eq!(
        none.score(&request, &nodes).unwrap(),
        vec![Verdict::Score(0.0); 3]
    );
}

#[test]
fn naming_policy_rejects_accepts_and_sets_hostname() {
    let p = shipped(&["naming-policy"]);
    let kind = "guest.create";

    let out = p
        .before(kind, &json!({"name": "web-frontend", "cpus": 1}))
        .unwrap();
    assert_eq!(
        out["hostname"], "web-frontend",
        "missing hostname gets the name"
    );
    assert_eq!(out["cpus"], 1, "other fields are kept");
    let out = p
        .before(kind, &json!({"name": "db-main", "hostname": ""}))
        .unwrap();
    assert_eq!(out["hostname"], "db-main", "empty hostname gets the name");
    let r = json!({"name": "db-main", "hostname": "pg1.example.org"});
    assert_eq!(p.before(kind, &r).unwrap(), r, "a given hostname is kept");

    for (bad, needle) in [
        (json!({"name": "Web-Frontend"}), "lowercase"),
        (json!({"name": "web_frontend"}), "lowercase"),
        (json!({"name": "web-"}), "hyphen"),
        (json!({"name": "cache-1"}), "web-, db-"),
        (json!({"cpus": 1}), "required"),
    ] {
        let e = p.before(kind, &bad).unwrap_err();
        assert!(matches!(e, PluginError::Rejected { .. }), "{e}");
        assert_eq!(e.plugin(), "naming-policy");
        let msg = e.to_string();
        assert!(msg.starts_with("plugin naming-policy: "), "{msg}");
        assert!(msg.contains(needle), "{bad}: {msg}");
    }
    // Another kind is not this plugin's business.
    assert!(p.before("guest.delete", &json!({"name": "X"})).is_ok());
    let i = info(&p, "naming-policy");
    assert_eq!(i.failures, 0, "a rejection is not a failure: {i:?}");
}

/// Writes plugins broken in every way a load can find into `d` (and two idle ones, one
/// broken, and a file that is not a plugin), and loads them with the broken ones enabled,
/// together with `ghost`, which is not there.
fn load_broken(d: &Path) -> Plugins {
    let ok = "fn before(kind, request, config) { () }";
    write(d, "bad-toml", "name = \"bad-toml\"\nversion = 1.0.0\n", ok);
    write(d, "mismatch", &manifest("other", "[\"before:*\"]"), ok);
    write(
        d,
        "no-fn",
        &manifest("no-fn", "[\"before:*\", \"event\"]"),
        ok,
    );
    write(
        d,
        "no-compile",
        &manifest("no-compile", "[\"before:*\"]"),
        "fn before(kind, request, config) {\n    let x = ;\n}\n",
    );
    write(d, "bad-hook", &manifest("bad-hook", "[\"beforehand\"]"), ok);
    write(d, "no-kind", &manifest("no-kind", "[\"after:\"]"), ok);
    let no_script = d.join("no-script");
    std::fs::create_dir_all(&no_script).unwrap();
    std::fs::write(
        no_script.join("plugin.toml"),
        manifest("no-script", "[\"before:*\"]"),
    )
    .unwrap();
    write(d, "idle", &manifest("idle", "[\"before:*\"]"), ok);
    write(d, "idle-broken", &manifest("idle-broken", "[\"nope\"]"), ok);
    std::fs::write(d.join("README.md"), "files are not plugins").unwrap();
    let all = [
        "bad-toml",
        "mismatch",
        "no-fn",
        "no-compile",
        "bad-hook",
        "no-kind",
        "no-script",
        "ghost",
    ];
    load(d, &all)
}

/// The load error of plugin `name`, which must be listed in state `error`.
fn load_error(p: &Plugins, name: &str) -> String {
    let i = info(p, name);
    assert_eq!(i.state, "error", "{i:?}");
    i.error.unwrap()
}

#[test]
fn manifest_errors_are_listed_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = load_broken(dir.path());
    let e = load_error(&p, "bad-toml");
    assert!(
        e.contains("plugin.toml (line 2, column 14)"),
        "position of the bad value: {e}"
    );
    let e = load_error(&p, "mismatch");
    assert!(
        e.contains("\"other\"") && e.contains("\"mismatch\"") && e.contains("make them equal"),
        "{e}"
    );
    let e = load_error(&p, "bad-hook");
    assert!(
        e.contains("unknown hook \"beforehand\"") && e.contains("placement"),
        "{e}"
    );
    assert!(load_error(&p, "no-kind").contains("operation kind"));
}

#[test]
fn script_errors_and_missing_plugins_are_listed_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = load_broken(d);
    let e = load_error(&p, "no-fn");
    assert!(
        e.contains("fn on_event with 2 parameter") && e.contains("event"),
        "{e}"
    );
    let e = load_error(&p, "no-compile");
    assert!(
        e.contains("plugin/no-compile") && e.contains("line 2, column"),
        "{e}"
    );
    let e = load_error(&p, "no-script");
    assert!(
        e.contains("plugin.rhai") && e.contains("cannot read"),
        "{e}"
    );
    let e = load_error(&p, "ghost");
    assert!(
        e.contains("not found in") && e.contains(&d.display().to_string()),
        "{e}"
    );
}

#[test]
fn broken_plugins_are_listed_in_order_and_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = load_broken(d);
    assert_eq!(info(&p, "idle").state, "disabled");
    assert_eq!(info(&p, "idle").error, None);
    // Checked even though disabled, so it can be fixed before it is enabled.
    assert_eq!(info(&p, "idle-broken").state, "error");
    assert!(p.list().iter().all(|i| i.name != "README.md"));
    let names: Vec<String> = p.list().into_iter().map(|i| i.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    // Broken plugins never run.
    assert_eq!(p.before("guest.create", &json!({})).unwrap(), json!({}));

    // A missing directory is no plugins, not an error.
    let empty = load(&d.join("nowhere"), &[]);
    assert!(empty.list().is_empty());
}

#[test]
fn runaway_before_is_stopped_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "spin",
        &manifest("spin", "[\"before:guest.create\"]"),
        "fn before(kind, request, config) { loop { } }",
    );
    let p = load(dir.path(), &["spin"]);
    let started = Instant::now();
    let e = p.before("guest.create", &json!({"name": "x"})).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.plugin(), "spin");
    let msg = e.to_string();
    assert!(
        msg.starts_with("plugin spin: ") && msg.contains("100 ms deadline"),
        "{msg}"
    );
    let i = info(&p, "spin");
    assert_eq!((i.calls, i.failures), (1, 1));
}

#[test]
fn failing_score_fails_placement_naming_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "thrower",
        &manifest("thrower", "[\"placement\"]"),
        "fn score(request, nodes, config) {\n    throw \"no idea\";\n}",
    );
    write(
        dir.path(),
        "shapeless",
        &manifest("shapeless", "[\"placement\"]"),
        "fn score(request, nodes, config) { 42 }",
    );
    let nodes = [node("a", 4096)];
    let p = load(dir.path(), &["thrower"]);
    let e = p.score(&json!({"memory_mib": 512}), &nodes).unwrap_err();
    assert_eq!(e.plugin(), "thrower");
    let msg = e.to_string();
    assert!(
        msg.starts_with("plugin thrower: ") && msg.contains("no idea") && msg.contains("line 2"),
        "{msg}"
    );
    let p = load(dir.path(), &["shapeless"]);
    let msg = p
        .score(&json!({"memory_mib": 512}), &nodes)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("plugin shapeless: ") && msg.contains("must return a map"),
        "{msg}"
    );
}

#[test]
fn scores_add_up_and_the_first_veto_stands() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a-veto",
        &manifest("a-veto", "[\"placement\"]"),
        "fn score(request, nodes, config) { #{ x: \"too hot\", y: 1 } }",
    );
    write(
        dir.path(),
        "b-score",
        &manifest("b-score", "[\"placement\"]"),
        "fn score(request, nodes, config) { #{ x: 5, y: 2.5, ghost: 9, z: \"also no\" } }",
    );
    let p = load(dir.path(), &["a-veto", "b-score"]);
    let v = p
        .score(&json!({}), &[node("x", 1), node("y", 1), node("z", 1)])
        .unwrap();
    assert_eq!(
        v,
        vec![
            Verdict::Veto {
                plugin: "a-veto".into(),
                reason: "too hot".into()
            },
            Verdict::Score(3.5),
            Verdict::Veto {
                plugin: "b-score".into(),
                reason: "also no".into()
            },
        ]
    );
}

#[test]
fn before_hooks_chain_in_name_order_and_config_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let m = |name: &str, hook: &str| {
        format!(
            "{}adjust = [\"name\"]\n[config]\nsuffix = \"-x\"\n",
            manifest(name, &format!("[\"{hook}\"]"))
        )
    };
    let (m1, m2) = (m("one", "before:*"), m("two", "before:guest.create"));
    let script =
        "fn before(kind, request, config) { #{ set: #{ name: request.name + config.suffix } } }";
    write(dir.path(), "one", &m1, script);
    write(dir.path(), "two", &m2, script);
    let p = load(dir.path(), &["one", "two"]);
    let out = p.before("guest.create", &json!({"name": "a"})).unwrap();
    assert_eq!(out["name"], "a-x-x");
    let out = p.before("guest.delete", &json!({"name": "a"})).unwrap();
    assert_eq!(out["name"], "a-x", "only before:* matches another kind");
}

#[test]
fn before_may_set_only_adjustable_fields() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "sneaky",
        &format!(
            "{}adjust = [\"hostname\"]\n",
            manifest("sneaky", "[\"before:guest.create\"]")
        ),
        "fn before(kind, request, config) { #{ set: #{ hostname: \"h\", memory_mib: 65536 } } }",
    );
    let p = load(dir.path(), &["sneaky"]);
    let e = p
        .before("guest.create", &json!({"name": "a", "memory_mib": 512}))
        .unwrap_err();
    assert!(matches!(e, PluginError::Failed { .. }));
    assert_eq!(e.plugin(), "sneaky");
    let msg = e.to_string();
    assert!(
        msg.starts_with("plugin sneaky: ")
            && msg.contains("\"memory_mib\"")
            && msg.contains("adjust"),
        "{msg}"
    );
}

#[test]
fn failing_observers_are_counted_not_raised() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "watcher",
        &manifest("watcher", "[\"after:*\", \"after_step\", \"event\"]"),
        "fn after(kind, op, config) { throw `after ${kind} ${op.id}`; }\n\
         fn after_step(kind, op, step, config) { step.n }\n\
         fn on_event(event, config) { throw \"event\"; }",
    );
    let p = load(dir.path(), &["watcher"]);
    p.after("guest.create", &json!({"id": "op-1"}));
    let i = info(&p, "watcher");
    assert_eq!((i.calls, i.failures), (1, 1));
    let last = i.last_error.unwrap();
    assert!(last.contains("after guest.create op-1"), "{last}");
    p.after_step("guest.create", &json!({"id": "op-1"}), &json!({"n": 1}));
    p.on_event(&json!({"type": "node.offline"}));
    let i = info(&p, "watcher");
    assert_eq!((i.calls, i.failures), (3, 2));
    assert!(i.last_error.unwrap().contains("event"));
}
