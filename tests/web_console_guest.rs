//! The web console with a real TCG guest, in a real Chromium: create it through the form
//! (the progress bar moves, the list turns `running` without a reload), open its console
//! (noVNC connects through the controller's WebSocket, frames arrive, "send text" reaches
//! the guest's terminal), and shut it down from its page (`virsh` shows it off). Console
//! tickets are single-use and their owner's. Figures, printed: a state change made behind
//! corral's back (`virsh suspend`) reaching the SSE stream and the page, and the console's
//! throughput through the WebSocket next to a direct VNC connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::guest::{fixture_template_and_pool, parts, sh, virsh, wait_agent, Sweep};
use common::host::Bridge;
use common::vnc::{measure, refused_with, Link};
use common::Cloud;
use serde_json::{json, Value};

const URI: &str = "qemu:///system";

fn root(cloud: &Cloud) -> String {
    cloud.url("").trim_end_matches("/api/v1").to_string()
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

async fn open(b: &Browser, hash: &str, css: &str) {
    b.exec("location.hash = arguments[0];", json!([hash])).await;
    b.wait(css, 15).await;
}

/// Chooses the option of `select` whose text starts with `text`.
async fn choose(b: &Browser, select: &str, text: &str) {
    let ok = b
        .exec(
            "const s = document.querySelector(arguments[0]);
             const o = [...s.options].find(o => o.textContent.trim().startsWith(arguments[1]));
             if (!o) return false;
             s.value = o.value; s.dispatchEvent(new Event('change', {bubbles: true}));
             return true;",
            json!([select, text]),
        )
        .await;
    assert_eq!(ok, json!(true), "no option {text:?} in {select}");
}

/// Creates the guest through the form; answers the progress values seen.
async fn create_through_the_form(b: &Browser, name: &str) -> Vec<f64> {
    open(b, "#/guests/new", "#create-name").await;
    b.wait("#create-template option", 10).await;
    b.fill("#create-name", name).await;
    choose(b, "#create-template", "gi").await;
    choose(b, "#create-pool", "webnet").await;
    b.fill("#create-cpus", "1").await;
    b.fill("#create-memory", "128").await;
    b.click("#create-generate-password").await;
    let pw = b.prop("#create-password", "value").await;
    assert!(pw.as_str().unwrap().len() >= 12, "generated password {pw}");
    // Every value the bar takes, as the page sets it.
    b.exec(
        "window.__progress = [];
         const box = document.querySelector('#create-progress');
         new MutationObserver((records) => {
           for (const r of records) {
             if (r.attributeName === 'value') window.__progress.push(Number(r.oldValue));
             else for (const n of r.addedNodes) if (n.querySelector && n.querySelector('progress')) window.__progress.push(0);
           }
         }).observe(box, {subtree: true, childList: true, attributes: true, attributeOldValue: true});",
        json!([]),
    )
    .await;
    b.click("#create-submit").await;
    b.wait("#create-progress a", 400).await;
    let mut seen: Vec<f64> = serde_json::from_value(
        b.exec(
            "const p = document.querySelector('#create-progress progress');
             return window.__progress.concat([p.value]);",
            json!([]),
        )
        .await,
    )
    .unwrap();
    seen.dedup();
    seen
}

/// A `virsh suspend` behind corral's back: when it reaches the event stream and when the
/// page shows it.
async fn state_change_figure(b: &Browser, cloud: &Cloud, gid: &str, name: &str) {
    open(b, &format!("#/guests/{gid}"), "#guest-state").await;
    b.wait_text("#guest-state", 30, |t| t.contains("running"))
        .await;
    b.exec(
        "window.__changed = null;
         new MutationObserver(() => {
           const s = document.querySelector('#guest-state');
           if (!window.__changed && s && s.textContent.includes('paused')) window.__changed = Date.now();
         }).observe(document.body, {subtree: true, childList: true, characterData: true});",
        json!([]),
    )
    .await;
    let mut sse = reqwest::Client::new()
        .get(cloud.url("/events"))
        .bearer_auth(cloud.token())
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = epoch_ms();
    assert!(virsh(URI, &["suspend", name]).0);
    let mut buf = String::new();
    let mut at_sse = None;
    while at_sse.is_none() && epoch_ms() - t0 < 60_000.0 {
        for (_, e) in common::read_sse(&mut sse, &mut buf, 1, Duration::from_secs(5)).await {
            if e["kind"] == "guest.state" && e["subject"] == gid && e["data"]["state"] == "paused" {
                at_sse = Some(epoch_ms());
            }
        }
    }
    let at_sse = at_sse.expect("no paused event on the stream");
    let mut at_page = Value::Null;
    while at_page.is_null() && epoch_ms() - t0 < 60_000.0 {
        at_page = b.exec("return window.__changed;", json!([])).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_page = at_page.as_f64().expect("the page never showed paused");
    common::browser::figure(&format!(
        "libvirt change (virsh suspend) → SSE event {:.0} ms, → page shows it {:.0} ms: ratio {:.2}",
        at_sse - t0,
        at_page - t0,
        (at_page - t0) / (at_sse - t0)
    ));
    assert!(virsh(URI, &["resume", name]).0);
    b.wait_text("#guest-state", 60, |t| t.contains("running"))
        .await;
}

/// The console in the page: connected, frames drawn, typed text reaches the guest.
async fn console_in_the_page(b: &Browser, name: &str) {
    b.click("#console-open").await;
    b.wait_text("#console-status", 60, |t| t.trim() == "connected")
        .await;
    let t0 = Instant::now();
    loop {
        let colours = b
            .exec(
                "const c = document.querySelector('#console-screen canvas');
                 if (!c || !c.width) return 0;
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                 const seen = new Set();
                 for (let i = 0; i < d.length && seen.size < 8; i += 4 * 97) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
                 return seen.size;",
                json!([]),
            )
            .await;
        let bytes = b
            .exec(
                "return window.corralConsole ? window.corralConsole.bytesReceived() : 0;",
                json!([]),
            )
            .await;
        if colours.as_u64().unwrap_or(0) > 1 && bytes.as_f64().unwrap_or(0.0) > 2_000.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no frames drawn: {colours} colours, {bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.fill("#console-send-text-input", "hello-console-42").await;
    assert_eq!(b.prop("#console-send-enter", "checked").await, json!(true));
    b.click("#console-send-text").await;
    let t0 = Instant::now();
    loop {
        let typed = sh(URI, name, "cat /run/console-typed 2>/dev/null; true");
        if typed.contains("hello-console-42") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the guest's terminal got {typed:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.screenshot("console").await;
}

/// Tickets: single-use and their owner's; then the throughput figure.
async fn tickets_and_throughput(cloud: &Cloud, gid: &str) {
    let ticket = || async {
        let (s, v) = cloud
            .post(&format!("/guests/{gid}/console"), json!({}))
            .await;
        assert_eq!(s, 201, "{v}");
        v
    };
    let ws_url = |t: &Value| {
        format!(
            "ws://{}{}",
            root(cloud).trim_start_matches("http://"),
            t["websocket"].as_str().unwrap()
        )
    };
    let other = cloud.new_user("peeker").await;
    let t = ticket().await;
    assert_eq!(
        refused_with(&ws_url(&t), &other).await,
        Some(403),
        "another user's ticket"
    );
    assert_eq!(
        refused_with(&ws_url(&t), cloud.token()).await,
        Some(403),
        "a ticket is spent by its first use"
    );
    assert_eq!(refused_with(&ws_url(&t), "not-a-token").await, Some(401));

    const FRAMES: usize = 40;
    let direct = ticket().await;
    let addr = format!("{}:{}", direct["address"].as_str().unwrap(), direct["port"]);
    let (d_bytes, d_time, w, h) = measure(
        Link::tcp(&addr).await,
        direct["password"].as_str().unwrap(),
        FRAMES,
    )
    .await;
    let via = ticket().await;
    let link = Link::websocket(&ws_url(&via), cloud.token()).await;
    let (p_bytes, p_time, _, _) = measure(link, via["password"].as_str().unwrap(), FRAMES).await;
    let rate = |b: u64, t: Duration| b as f64 / t.as_secs_f64() / 1048576.0;
    common::browser::figure(&format!(
        "console throughput, {FRAMES} full raw frames of {w}×{h}: direct VNC {:.1} MiB/s, \
         through the controller's WebSocket {:.1} MiB/s: ratio {:.2}",
        rate(d_bytes, d_time),
        rate(p_bytes, p_time),
        rate(p_bytes, p_time) / rate(d_bytes, d_time)
    ));
    assert_eq!(d_bytes, p_bytes, "both saw the same frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_created_watched_typed_into_and_shut_down_from_the_browser() {
    if !parts() {
        return;
    }
    let Some(b) = Browser::start().await else {
        return;
    };
    let bridge = Bridge::new("198.51.100.225/28");
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let cloud = Cloud::split_with(
        URI,
        vec![
            env("CORRAL_DOMAIN_TYPE", "qemu"),
            env("CORRAL_VM_NETWORK_BRIDGE", &bridge.name),
            env("CORRAL_VNC_PORT_MIN", "6310"),
            env("CORRAL_VNC_PORT_MAX", "6319"),
        ],
    )
    .await;
    fixture_template_and_pool(&cloud, 224, "webnet").await;
    let name = format!("wb{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let _sweep = Sweep(name.clone());

    b.goto(&format!("{}/#/login", root(&cloud))).await;
    b.fill("#login-username", "admin").await;
    b.fill("#login-password", "test-admin-pw").await;
    b.click("#login-submit").await;
    b.wait("#logout", 15).await;
    b.exec("window.__samePage = true;", json!([])).await;

    // 2. Create through the form: the progress bar moves; the list shows it running.
    let seen = create_through_the_form(&b, &name).await;
    eprintln!("create progress seen: {seen:?}");
    assert!(
        seen.len() >= 3 && seen.windows(2).all(|w| w[1] >= w[0]),
        "the progress bar did not move forward: {seen:?}\n{}",
        cloud.log_tail(20)
    );
    let guests = cloud.get("/guests").await.1;
    let gid = guests
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    open(&b, "#/guests", &format!("tr[data-guest-id=\"{gid}\"]")).await;
    b.wait_text(&format!("tr[data-guest-id=\"{gid}\"] td.state"), 60, |t| {
        t.trim() == "running"
    })
    .await;
    assert_eq!(
        b.exec("return window.__samePage === true;", json!([]))
            .await,
        json!(true),
        "the page reloaded"
    );
    wait_agent(URI, &name);

    state_change_figure(&b, &cloud, &gid, &name).await;
    // 3. The console.
    console_in_the_page(&b, &name).await;
    tickets_and_throughput(&cloud, &gid).await;

    // 4. Shut down from the page; virsh shows it off.
    b.click("#action-shutdown").await;
    if b.find("dialog[open] button.confirm").await.is_some() {
        b.click("dialog[open] button.confirm").await;
    }
    b.wait_text("#guest-state", 180, |t| t.contains("shutoff"))
        .await;
    assert_eq!(virsh(URI, &["domstate", &name]).1.trim(), "shut off");
    b.screenshot("guest-shut-off").await;

    let (s, v) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        cloud.wait_op(v["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
}
