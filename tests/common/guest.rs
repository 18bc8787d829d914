//! A real guest seen from the host: `virsh` against either daemon, the guest agent, and a
//! sweep of the test's domain on drop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::require;

/// Whether the system libvirtd runs (and the tools the two-daemon tests need); in CI a
/// missing part is a failure.
pub fn parts() -> bool {
    let have = require("virsh") && require("redis-server") && require("unshare");
    let system = have
        && Command::new("virsh")
            .args(["-c", "qemu:///system", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !system {
        if std::env::var("CI").is_ok() {
            panic!("libvirtd must run in CI (.ci/host-setup.sh starts it)");
        }
        eprintln!("SKIPPED: libvirtd is not running (run .ci/host-setup.sh)");
    }
    system
}

/// `virsh -c uri …`: whether it succeeded, and its output.
pub fn virsh(uri: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// One guest agent command through `virsh qemu-agent-command`; its `return`.
pub fn agent(uri: &str, dom: &str, cmd: Value) -> Option<Value> {
    let (ok, out) = virsh(
        uri,
        &[
            "qemu-agent-command",
            dom,
            &cmd.to_string(),
            "--timeout",
            "5",
        ],
    );
    ok.then(|| serde_json::from_str::<Value>(&out).ok())
        .flatten()
        .map(|v| v["return"].clone())
}

/// Waits (up to 3 minutes) for the guest agent of `dom` to answer.
pub fn wait_agent(uri: &str, dom: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(180) {
        if agent(uri, dom, json!({"execute": "guest-ping"})).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the agent of {dom} never answered on {uri}");
}

/// Runs `sh -c script` in the guest through its agent; its standard output.
pub fn sh(uri: &str, dom: &str, script: &str) -> String {
    use base64::Engine as _;
    let r = agent(
        uri,
        dom,
        json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}}),
    )
    .expect("guest-exec");
    let pid = r["pid"].as_i64().unwrap();
    for _ in 0..100 {
        let s = agent(
            uri,
            dom,
            json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
        )
        .unwrap();
        if s["exited"] == json!(true) {
            let out = s["out-data"].as_str().unwrap_or("");
            return String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(out)
                    .unwrap(),
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{script} did not finish in the guest");
}

/// Whether `dom` runs on the daemon at `uri`.
pub fn running(uri: &str, dom: &str) -> bool {
    virsh(uri, &["domstate", dom]).1.trim() == "running"
}

/// Stops and undefines the test's domain on the system daemon, on drop: a failing test
/// leaves no guest running (the second daemon sweeps its own).
pub struct Sweep(pub String);

impl Drop for Sweep {
    fn drop(&mut self) {
        let _ = virsh("qemu:///system", &["destroy", &self.0]);
        let _ = virsh(
            "qemu:///system",
            &["undefine", "--snapshots-metadata", &self.0],
        );
    }
}

/// The test guest's template, `gi` (the fixture image, its OS-init profile `test-guest`),
/// and pool `pool` on the test network `198.51.100.{net}/28`: gateway `.{net+1}`, range
/// `.{net+2}`–`.{net+14}`.
pub async fn fixture_template_and_pool(cloud: &super::Cloud, net: u8, pool: &str) {
    use corral_client::apis::resources_api;
    use corral_client::models::{CreatePool, CreateTemplate, OsType};
    let c = &cloud.sdk().config;
    let at = |i: u8| format!("198.51.100.{}", net + i);
    let mut t = CreateTemplate::new(
        "gi".into(),
        OsType::Linux,
        super::fixture_dir()
            .join("template.qcow2")
            .display()
            .to_string(),
    );
    t.min_memory_mib = Some(96);
    t.os_init_profile = Some("test-guest".into());
    resources_api::template_create(c, t)
        .await
        .unwrap_or_else(|e| panic!("template: {}", super::sdk_error(e)));
    let mut p = CreatePool::new(format!("198.51.100.{net}/28"), pool.into(), at(14), at(2));
    p.gateway = Some(at(1));
    resources_api::pool_create(c, p)
        .await
        .unwrap_or_else(|e| panic!("pool: {}", super::sdk_error(e)));
}
