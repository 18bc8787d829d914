//! Shipped scripts against golden files, and the sandbox against hostile scripts.

use std::time::{Duration, Instant};

use super::catalog::{sample_guest, sample_params, Kind, Scripts, BOOT_JOBS, PROFILES};
use super::sandbox::{Limits, ScriptError};
use crate::guestinit::render_seed;
use crate::render::{golden, Renderer};

fn scripts() -> Scripts {
    Scripts::new(Limits::default()).unwrap()
}

#[test]
fn every_shipped_profile_matches_its_golden_plan_and_seed() {
    let s = scripts();
    let r = Renderer::new(None).unwrap();
    for (name, source) in PROFILES {
        let mut g = sample_guest();
        g.profile = name.to_string();
        if *name == "windows" {
            g.os_type = "windows".into();
            g.user = "Administrator".into();
            g.password_hash = None;
        }
        let plan = s.plan(name, source, &g).unwrap();
        let json = serde_json::to_string_pretty(&plan).unwrap() + "\n";
        golden(&format!("profiles/{name}.plan.json"), &json);
        let docs = render_seed(&r, &plan).unwrap();
        golden(&format!("profiles/{name}.user-data"), &docs.user_data);
        if plan.delivery == crate::guestinit::Delivery::Agent {
            let actions = serde_json::to_string_pretty(&plan.agent_actions()).unwrap() + "\n";
            golden(&format!("profiles/{name}.agent.json"), &actions);
        }
    }
}

#[test]
fn a_profile_without_an_address_plans_no_network() {
    let s = scripts();
    let mut g = sample_guest();
    g.ip = None;
    g.address = None;
    g.prefix = None;
    g.netmask = None;
    for (name, source) in PROFILES {
        let plan = s.plan(name, source, &g).unwrap();
        assert!(plan.network.is_none(), "{name}");
    }
}

#[test]
fn every_shipped_boot_job_matches_its_golden_actions() {
    let s = scripts();
    let g = sample_guest();
    for (name, source) in BOOT_JOBS {
        let actions = s.actions(name, source, &g, &sample_params(name)).unwrap();
        let json = serde_json::to_string_pretty(&actions).unwrap() + "\n";
        golden(&format!("boot/{name}.json"), &json);
    }
}

#[test]
fn a_boot_job_missing_a_param_fails_naming_the_script() {
    let s = scripts();
    let src = super::catalog::shipped(Kind::Boot, "set-hostname").unwrap();
    let e = s
        .actions("set-hostname", src, &sample_guest(), &serde_json::json!({}))
        .unwrap_err();
    assert!(e.to_string().contains("boot/set-hostname"), "{e}");
}

#[test]
fn profile_output_is_checked() {
    let s = scripts();
    let cases = [
        (r#"fn plan(g) { #{ hostname: "a b" } }"#, "hostname"),
        (
            r#"fn plan(g) { #{ hostname: "a", users: [#{ name: "root", password_hash: "hunter2" }] } }"#,
            "crypt hash",
        ),
        (
            r#"fn plan(g) { #{ hostname: "a", files: [#{ path: "etc/x", content: "" }] } }"#,
            "absolute",
        ),
        (
            r#"fn plan(g) { #{ hostname: "a", files: [#{ path: "/x", content: "", mode: "rw" }] } }"#,
            "octal",
        ),
        (
            r#"fn plan(g) { #{ hostname: "a", fils: [] } }"#,
            "unknown field",
        ),
        (
            r#"fn plan(g) { #{ hostname: "a", delivery: "pigeon" } }"#,
            "delivery",
        ),
        (r#"fn plan(g) { 42 }"#, "plan map"),
    ];
    for (src, want) in cases {
        let e = s.validate(Kind::Profile, "p", src).unwrap_err();
        assert!(matches!(e, ScriptError::Shape { .. }), "{src}: {e:?}");
        assert!(e.to_string().contains(want), "{src}: {e}");
        assert!(e.to_string().contains("os-init/p"), "{e}");
    }
}

#[test]
fn compile_errors_say_line_and_column() {
    let s = scripts();
    let e = s
        .validate(Kind::Profile, "broken", "fn plan(g) {\n  let x = ;\n}\n")
        .unwrap_err();
    match &e {
        ScriptError::Invalid { line, column, .. } => {
            assert_eq!(*line, Some(2), "{e}");
            assert!(column.is_some(), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("line 2, column"), "{e}");
    let e = s
        .validate(Kind::Profile, "nofn", "fn plan_it(g) { 1 }")
        .unwrap_err();
    assert!(e.to_string().contains("must define fn plan"), "{e}");
    let e = s
        .validate(Kind::Boot, "nofn", "fn actions(g) { [] }")
        .unwrap_err();
    assert!(
        e.to_string().contains("must define fn actions with 2"),
        "{e}"
    );
}

/// Hostile scripts: each must stop with an error naming the script, within its deadline.
/// The table printed here is the sandbox report (`cargo test sandbox_ -- --nocapture`).
#[test]
fn sandbox_stops_hostile_scripts() {
    let limits = Limits {
        deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = Scripts::new(limits).unwrap();
    let sb = s.sandbox();
    let body = |b: &str| format!("fn plan(g) {{ {b} }}\n");
    let cases: &[(&str, String, &str)] = &[
        ("infinite loop", body("loop { }"), "operations"),
        (
            "slow loop past the deadline",
            body("let x = 0; loop { x += 1; if x > 2_000_000_000 { break; } }"),
            "operations",
        ),
        (
            "deep recursion",
            "fn f(n) { f(n + 1) }\nfn plan(g) { f(0) }\n".into(),
            "nested deeper",
        ),
        (
            "string doubling",
            body(r#"let s = "x"; loop { s += s; }"#),
            "exceeds",
        ),
        (
            "huge array",
            body("let a = []; loop { a.push(1); }"),
            "exceeds",
        ),
        (
            "huge map",
            body("let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }"),
            "exceeds",
        ),
        (
            "unregistered function",
            body(r#"open_file("/etc/passwd")"#),
            "Function not found",
        ),
        (
            "module import of a file",
            "import \"/etc/passwd\" as p;\nfn plan(g) { 1 }\n".into(),
            "imports are not allowed",
        ),
        ("eval", body(r#"eval("1")"#), "eval"),
        ("throw", body(r#"throw "no""#), "threw"),
    ];
    println!("| hostile script | stopped after | error |");
    println!("|---|---|---|");
    for (what, src, want) in cases {
        let started = Instant::now();
        let r = sb
            .compile("hostile", src, &[("plan", 1)])
            .and_then(|sc| sb.call(&sc, "plan", (rhai::Dynamic::UNIT,)));
        let took = started.elapsed();
        let e = r.expect_err(what);
        let msg = e.to_string();
        println!("| {what} | {} ms | {msg} |", took.as_millis());
        assert!(msg.contains("hostile"), "{what}: {msg}");
        assert!(
            msg.contains(want) || msg.contains("deadline"),
            "{what}: {msg}"
        );
        assert!(took < limits.deadline * 3, "{what} ran {took:?}");
    }
}

#[test]
fn the_deadline_stops_a_script_within_the_operation_limit() {
    let limits = Limits {
        deadline: Duration::from_millis(50),
        max_operations: 0, // 0 = unlimited in Rhai: only the deadline can stop it
        ..Limits::default()
    };
    let s = Scripts::new(limits).unwrap();
    let sb = s.sandbox();
    let sc = sb
        .compile("spin", "fn plan(g) { loop { } }", &[("plan", 1)])
        .unwrap();
    let started = Instant::now();
    let e = sb.call(&sc, "plan", (rhai::Dynamic::UNIT,)).unwrap_err();
    assert!(matches!(e, ScriptError::Deadline { .. }), "{e:?}");
    assert!(e.to_string().contains("spin"), "{e}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // The engine still serves after a stopped script.
    let ok = sb
        .compile("ok", "fn plan(g) { 7 }", &[("plan", 1)])
        .unwrap();
    assert_eq!(
        sb.call(&ok, "plan", (rhai::Dynamic::UNIT,))
            .unwrap()
            .as_int()
            .unwrap(),
        7
    );
}
