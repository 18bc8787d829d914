//! Guest-agent runs: boot jobs and agent-delivered init plans, executed inside a guest
//! through the QEMU guest agent (`virDomainQemuAgentCommand`).
//!
//! The flow of one [`NodeAction::AgentRun`](crate::model::NodeAction::AgentRun):
//! 1. wait for the agent: `guest-ping` until it answers or `wait_secs` pass (a guest that
//!    just started is still booting; the fixture's agent starts when its boot is done);
//! 2. run each batch's actions in order. A command is `guest-exec` of `/bin/sh -c` with its
//!    output captured, polled with `guest-exec-status` until it exits; a file is written by
//!    `sh` reading the content from the command's stdin (so parent directories and the mode
//!    are handled in the guest, and the content never appears on a command line); a
//!    password is `guest-set-user-password` with `crypted: true`, so only the hash travels;
//! 3. a failed action ends its batch (one boot job) and the run goes on with the next one:
//!    the report says which action failed and what it printed.
//!
//! Actions run at least once: a run repeated after a node crash repeats them, so boot
//! jobs are written to be idempotent (set, not toggle).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::actions::ActionError;
use super::hypervisor::{DomState, HvError, Hypervisor};
use crate::guestinit::AgentAction;
use crate::model::{ActionReport, AgentBatch, AgentReport, BatchReport};
use crate::script::hostapi::shell_quote;

/// Longest a single command may run in the guest.
const EXEC_LIMIT: Duration = Duration::from_secs(300);
const OUTPUT_KEEP: usize = 1024;
/// How long a guest's agent may stay silent before a live resize goes on without it.
const AGENT_GRACE: Duration = Duration::from_secs(5);

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn call(
    hv: &dyn Hypervisor,
    guest: &str,
    cmd: Value,
    timeout: i32,
) -> Result<Value, HvError> {
    let answer = hv.agent(guest, &cmd.to_string(), timeout).await?;
    let v: Value = match serde_json::from_str(&answer) {
        Ok(v) => v,
        Err(source) => return Err(HvError::AgentAnswer { answer, source }),
    };
    Ok(v.get("return").cloned().unwrap_or(Value::Null))
}

/// Waits for the agent to answer; returns how long that took.
async fn wait_for_agent(
    hv: &dyn Hypervisor,
    guest: &str,
    wait: Duration,
) -> Result<Duration, ActionError> {
    let started = Instant::now();
    loop {
        match hv.state(guest).await? {
            Some(DomState::Running) => {}
            Some(other) => {
                return Err(ActionError::Permanent(format!(
                    "the guest is {}, not running: its boot jobs wait for its next boot",
                    other.as_str()
                )))
            }
            None => return Err(ActionError::Permanent("the guest's domain is gone".into())),
        }
        match call(hv, guest, json!({"execute": "guest-ping"}), 2).await {
            Ok(_) => return Ok(started.elapsed()),
            // A hypervisor without agent support will not grow one by waiting.
            Err(e @ HvError::Unsupported(_)) => {
                return Err(ActionError::failed(
                    "this hypervisor cannot reach a guest agent",
                    e,
                ))
            }
            Err(_) => {}
        }
        if started.elapsed() >= wait {
            return Err(ActionError::Permanent(format!(
                "the guest agent did not answer within {} s (is qemu-guest-agent installed and running?)",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Freezes the guest's filesystems when its agent answers within a moment: `Ok(true)`
/// when frozen, `Ok(false)` with no agent or a guest that cannot freeze (the reason is
/// logged). A guest left frozen by an earlier attempt is thawed first.
pub async fn freeze(hv: &dyn Hypervisor, guest: &str) -> bool {
    if call(hv, guest, json!({"execute": "guest-ping"}), 2)
        .await
        .is_err()
    {
        return false;
    }
    thaw_if_frozen(hv, guest).await;
    match call(hv, guest, json!({"execute": "guest-fsfreeze-freeze"}), 30).await {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(guest, "not quiesced: the agent could not freeze: {e}");
            // A partial freeze must not stay.
            thaw_if_frozen(hv, guest).await;
            false
        }
    }
}

/// Thaws the guest's filesystems if they are frozen (a no-op otherwise or without agent).
pub async fn thaw_if_frozen(hv: &dyn Hypervisor, guest: &str) {
    let frozen = call(hv, guest, json!({"execute": "guest-fsfreeze-status"}), 5)
        .await
        .is_ok_and(|s| s == json!("frozen"));
    if frozen {
        if let Err(e) = call(hv, guest, json!({"execute": "guest-fsfreeze-thaw"}), 30).await {
            tracing::warn!(guest, "thawing the guest's filesystems: {e}");
        }
    }
}

/// Brings the guest's plugged vCPUs online through its agent (`guest-set-vcpus`): a
/// hot-plugged vCPU arrives offline unless something in the guest (udev, the agent)
/// onlines it. Waits up to `wait` for the guest to see `want` vCPUs; returns how many are
/// online, or None when no agent answered within [`AGENT_GRACE`].
pub async fn online_vcpus(
    hv: &dyn Hypervisor,
    guest: &str,
    want: u32,
    wait: Duration,
) -> Option<u32> {
    let started = Instant::now();
    let mut online = None;
    while started.elapsed() < wait {
        match call(hv, guest, json!({"execute": "guest-get-vcpus"}), 5).await {
            Ok(vcpus) => {
                let list = vcpus.as_array().cloned().unwrap_or_default();
                let offline: Vec<Value> = list
                    .iter()
                    .filter(|v| v["online"] == json!(false))
                    .map(|v| json!({"logical-id": v["logical-id"], "online": true}))
                    .collect();
                let now = (list.len() - offline.len()) as u32;
                online = Some(now);
                if offline.is_empty() && now >= want {
                    break;
                }
                if !offline.is_empty() {
                    let cmd =
                        json!({"execute": "guest-set-vcpus", "arguments": {"vcpus": offline}});
                    if let Err(e) = call(hv, guest, cmd, 10).await {
                        tracing::info!(guest, "onlining hot-plugged vCPUs: {e}");
                    }
                }
            }
            // A hypervisor without agent support will not grow one by waiting.
            Err(HvError::Unsupported(_)) => break,
            // A guest busy taking the new vCPU may miss an answer; one that never
            // answers has no agent.
            Err(_) if online.is_none() && started.elapsed() >= AGENT_GRACE => break,
            Err(_) => {}
        }
        // The guest's kernel registers a hot-plugged vCPU a moment after the plug.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    online
}

/// Runs `sh -c command` in the guest (stdin from `input`); returns exit code and output.
async fn exec(
    hv: &dyn Hypervisor,
    guest: &str,
    command: &str,
    input: Option<&[u8]>,
) -> Result<(i64, String), HvError> {
    let mut args = json!({"path": "/bin/sh", "arg": ["-c", command], "capture-output": true});
    if let Some(i) = input {
        args["input-data"] = Value::String(b64(i));
    }
    let r = call(
        hv,
        guest,
        json!({"execute": "guest-exec", "arguments": args}),
        30,
    )
    .await?;
    let pid = r["pid"]
        .as_i64()
        .ok_or_else(|| HvError::Agent(format!("guest-exec gave no pid: {r}")))?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        let st = call(
            hv,
            guest,
            json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
            10,
        )
        .await?;
        if st["exited"].as_bool() == Some(true) {
            let text = |k: &str| {
                st[k]
                    .as_str()
                    .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let mut out = text("out-data");
            out.push_str(&text("err-data"));
            let out: String = out.chars().take(OUTPUT_KEEP).collect();
            return Ok((st["exitcode"].as_i64().unwrap_or(-1), out));
        }
        if started.elapsed() > EXEC_LIMIT {
            return Err(HvError::Agent(format!(
                "the command is still running after {} s",
                EXEC_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

async fn run_action(hv: &dyn Hypervisor, guest: &str, a: &AgentAction) -> ActionReport {
    let result = match a {
        AgentAction::Exec { command } => exec(hv, guest, command, None).await,
        AgentAction::WriteFile {
            path,
            content,
            mode,
            append,
        } => {
            let p = shell_quote(path);
            let cmd = format!(
                "mkdir -p \"$(dirname {p})\" && cat {} {p} && chmod {mode} {p}",
                if *append { ">>" } else { ">" }
            );
            exec(hv, guest, &cmd, Some(content.as_bytes())).await
        }
        AgentAction::SetPassword {
            user,
            password_hash,
        } => call(
            hv,
            guest,
            json!({"execute": "guest-set-user-password",
                   "arguments": {"username": user, "password": b64(password_hash.as_bytes()), "crypted": true}}),
            30,
        )
        .await
        .map(|_| (0, String::new())),
    };
    match result {
        Ok((code, output)) => ActionReport {
            action: a.label(),
            ok: code == 0,
            exit_code: Some(code),
            output,
        },
        Err(e) => ActionReport {
            action: a.label(),
            ok: false,
            exit_code: None,
            output: e.to_string(),
        },
    }
}

pub async fn run(
    hv: &dyn Hypervisor,
    guest: &str,
    batches: &[AgentBatch],
    wait_secs: u64,
) -> Result<AgentReport, ActionError> {
    let waited = wait_for_agent(hv, guest, Duration::from_secs(wait_secs)).await?;
    let started = Instant::now();
    let mut report = AgentReport {
        agent_wait_ms: waited.as_millis() as u64,
        ..AgentReport::default()
    };
    for b in batches {
        let mut br = BatchReport {
            id: b.id.clone(),
            ok: true,
            ..BatchReport::default()
        };
        for (i, a) in b.actions.iter().enumerate() {
            let r = run_action(hv, guest, a).await;
            let failed = !r.ok;
            if failed {
                br.ok = false;
                br.error = Some(format!(
                    "action {} ({}) failed{}: {}",
                    i + 1,
                    r.action,
                    r.exit_code
                        .map(|c| format!(" with exit code {c}"))
                        .unwrap_or_default(),
                    r.output.trim()
                ));
            }
            br.results.push(r);
            if failed {
                break;
            }
        }
        report.batches.push(br);
    }
    report.run_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::hypervisor::Fake;

    fn running(fake: &Fake, uuid: &str) {
        fake.domains
            .lock()
            .unwrap()
            .insert(uuid.into(), (String::new(), DomState::Running));
    }

    #[tokio::test]
    async fn runs_batches_through_the_agent_protocol() {
        let fake = Fake::default();
        running(&fake, "g");
        let batches = vec![AgentBatch {
            script: None,
            id: "j1".into(),
            actions: vec![
                AgentAction::SetPassword {
                    user: "root".into(),
                    password_hash: "$6$x$y".into(),
                },
                AgentAction::WriteFile {
                    path: "/etc/a b".into(),
                    content: "secret-ish".into(),
                    mode: "0600".into(),
                    append: false,
                },
            ],
        }];
        let r = run(&fake, "g", &batches, 5).await.unwrap();
        assert!(r.batches[0].ok, "{r:?}");
        let log = fake.agent_log.lock().unwrap().clone();
        assert!(log[0].contains("guest-ping"));
        assert!(log[1].contains("guest-set-user-password") && log[1].contains("\"crypted\":true"));
        // The hash travels base64-encoded, the file content only as stdin.
        assert!(!log[1].contains("$6$x$y"));
        assert!(log[2].contains("guest-exec") && log[2].contains("input-data"));
        assert!(!log[2].contains("secret-ish"));
        assert!(log[2].contains("'/etc/a b'"));
    }

    #[tokio::test]
    async fn a_stopped_guest_fails_at_once() {
        let fake = Fake::default();
        fake.domains
            .lock()
            .unwrap()
            .insert("g".into(), (String::new(), DomState::Shutoff));
        let e = run(&fake, "g", &[], 60).await.unwrap_err();
        assert!(e.to_string().contains("next boot"), "{e}");
    }
}
