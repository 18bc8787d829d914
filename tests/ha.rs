//! HA (S74) with two libvirt daemons on this machine (`common::host::SecondLibvirt`),
//! each with its own corral node, both on the same storage directory named as shared
//! storage: node `a` on the system daemon, node `b` on the second one. Node b reaches
//! Redis and the controller through forwarders the test can cut (a partition).
//!
//! One HA guest, started on b, goes through three losses while a watcher reads
//! `virsh list` on both daemons every 200 ms and fails the test if it ever runs on both:
//!
//! 1. b's agent dies and b's fence command fails: nothing restarts; the guest stays
//!    `unknown`, its `state_reason` naming the fence's failure.
//! 2. b is lost (its agent and its guests killed; the fence command then confirms): the
//!    guest runs on a. The figure: the time from the loss to the guest running on a,
//!    against the configured detection time. When b returns, its old definition is
//!    removed and never started.
//! 3. The guest migrates back to b, then b is partitioned (guests alive, Redis and the
//!    controller unreachable) and its fence "confirms" without doing anything: b stops
//!    the guest itself (self-fencing) before a starts it. The controller is killed as it
//!    sends the start to a, and the failover finishes after its restart.
//!
//! Bad input changes nothing: a fence program outside the fence directory, or missing
//! (400), and another user's guest (404).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::guest::{parts, running, wait_agent, Sweep};
use common::host::{Bridge, SecondLibvirt};
use common::{sdk_error, Cloud};
use corral_client::apis::{guests_api, nodes_api};
use corral_client::models::{GuestHa, GuestState, MigrateGuest, NodeSettings};
use reqwest::Method;
use serde_json::json;

const A: &str = "qemu:///system";
/// The configured detection time: `CORRAL_NODE_TIMEOUT_SECS` (the harness's 6) and
/// `CORRAL_HA_AFTER_SECS`.
const NODE_TIMEOUT_SECS: u64 = 6;
const HA_AFTER_SECS: u64 = 4;
const SELF_FENCE_SECS: u64 = 3;

fn ok<A, E>(what: &str, answer: Result<A, corral_client::apis::Error<E>>) -> A {
    answer.unwrap_or_else(|e| panic!("{what}: {}", sdk_error(e)))
}

/// A TCP forwarder that can be cut: while cut, its connections are dropped and new ones
/// closed at once.
struct Cut {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Cut {
    async fn to(target: SocketAddr) -> Cut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c, list) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                list.lock().unwrap().push(task);
            }
        });
        Cut { port, cut, conns }
    }

    fn sever(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Reads where the guest runs every 200 ms; remembers every moment it ran on both.
struct Watch {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<u64>>,
    both: Arc<Mutex<Vec<Duration>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(b_uri: &str, name: &str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(0));
        let both = Arc::new(Mutex::new(Vec::new()));
        let (s, n, bo) = (stop.clone(), samples.clone(), both.clone());
        let (b_uri, name) = (b_uri.to_string(), name.to_string());
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if running(A, &name) && running(&b_uri, &name) {
                    bo.lock().unwrap().push(t0.elapsed());
                }
                *n.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Watch {
            stop,
            samples,
            both,
            thread: Some(thread),
        }
    }

    /// (samples taken, moments it ran on both).
    fn finish(mut self) -> (u64, Vec<Duration>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let n = *self.samples.lock().unwrap();
        let both = self.both.lock().unwrap().clone();
        (n, both)
    }
}

/// Polls `cond` every 100 ms for up to `secs`: when it first held.
async fn until(secs: u64, mut cond: impl FnMut() -> bool) -> Option<Instant> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if cond() {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// When `at` happened; otherwise a panic naming `what`, with the processes' logs.
fn must(r: &Rig, what: &str, at: Option<Instant>) -> Instant {
    at.unwrap_or_else(|| {
        // The operations as the database has them, for the failure's story.
        let ops = std::process::Command::new("sqlite3")
            .arg(r.cloud.dir().join("corral.db"))
            .arg(
                "SELECT kind, state, node_id, stage, message, error, payload FROM operations \
                 ORDER BY created_at DESC LIMIT 6",
            )
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        panic!(
            "{what}: it did not happen\noperations:\n{ops}\n{}",
            r.cloud.log_tail(30)
        )
    })
}

struct Rig {
    cloud: Cloud,
    lv2: SecondLibvirt,
    _bridge: Bridge,
    node_a: String,
    redis: Cut,
    api: Cut,
    fence: tempfile::TempDir,
    vnc: u16,
}

async fn rig(net: u8, vnc: u16) -> Option<Rig> {
    if !parts() {
        return None;
    }
    let at = |i: u8| format!("198.51.100.{}", net + i);
    let bridge = Bridge::new(&format!("{}/28", at(1)));
    let fence = tempfile::tempdir().unwrap();
    let fence_dir = fence.path().join("fence.d");
    std::fs::create_dir_all(&fence_dir).unwrap();
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut cloud = Cloud::split_with(
        A,
        vec![
            env("CORRAL_DOMAIN_TYPE", "qemu"),
            env("CORRAL_VM_NETWORK_BRIDGE", &bridge.name),
            env("CORRAL_VNC_PORT_MIN", &vnc.to_string()),
            env("CORRAL_VNC_PORT_MAX", &(vnc + 9).to_string()),
            env("CORRAL_MIGRATION_URI", A),
            env("CORRAL_MIGRATION_ADDRESS", "127.0.0.1"),
            env("CORRAL_SHARED_STORAGE", "ha-test"),
            env("CORRAL_HA_AFTER_SECS", &HA_AFTER_SECS.to_string()),
            env("CORRAL_SELF_FENCE_SECS", &SELF_FENCE_SECS.to_string()),
            env("CORRAL_FENCE_DIR", fence_dir.to_str().unwrap()),
        ],
    )
    .await;
    let Some(lv2) = SecondLibvirt::start(cloud.dir()) else {
        if std::env::var("CI").is_ok() {
            panic!("the second libvirtd must start in CI");
        }
        eprintln!("SKIPPED: a second libvirtd could not start here");
        return None;
    };
    let redis_port: u16 = cloud
        .redis
        .url()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let redis = Cut::to(SocketAddr::from(([127, 0, 0, 1], redis_port))).await;
    let api = Cut::to(SocketAddr::from(([127, 0, 0, 1], cloud.port))).await;
    cloud.enroll("node-b").await;
    let node_a = cloud.node_id.clone();
    common::guest::fixture_template_and_pool(&cloud, net, "hnet").await;
    let mut r = Rig {
        cloud,
        lv2,
        _bridge: bridge,
        node_a,
        redis,
        api,
        fence,
        vnc,
    };
    start_b(&mut r).await;
    Some(r)
}

/// Starts (or restarts) node b's agent, through the forwarders.
async fn start_b(r: &mut Rig) {
    let url = r.cloud.node_urls["node-b"].clone();
    let direct = r.cloud.redis.url();
    let direct = direct.trim_start_matches("redis://").trim_end_matches('/');
    let url = url.replace(direct, &format!("127.0.0.1:{}", r.redis.port));
    let controller = format!("http://127.0.0.1:{}", r.api.port);
    let (min, max) = ((r.vnc + 10).to_string(), (r.vnc + 19).to_string());
    let uri = r.lv2.uri.clone();
    let address = r.lv2.address.clone();
    r.cloud
        .add_node(
            "node-b",
            &[
                ("CORRAL_HYPERVISOR_URI", uri.as_str()),
                ("CORRAL_MIGRATION_URI", uri.as_str()),
                ("CORRAL_MIGRATION_ADDRESS", address.as_str()),
                ("CORRAL_VNC_PORT_MIN", min.as_str()),
                ("CORRAL_VNC_PORT_MAX", max.as_str()),
                ("CORRAL_REDIS_URL", url.as_str()),
                ("CORRAL_CONTROLLER_URL", controller.as_str()),
            ],
        )
        .await;
}

fn kill_b(r: &mut Rig) {
    for p in &mut r.cloud.extra_nodes {
        p.kill9();
    }
    r.cloud.extra_nodes.clear();
}

/// The test's fence program: logs each call; fails while `fence-fails` exists; does
/// nothing but confirm while `fence-lies` exists; otherwise kills b's agent (its pid in
/// `agent.pid`) and every domain of b's daemon, as a power-off would.
fn write_fence(r: &Rig) {
    use std::os::unix::fs::PermissionsExt;
    let d = r.fence.path().display().to_string();
    let script = format!(
        "#!/bin/sh\necho \"fence $*\" >> {d}/fence.log\n\
         if [ -e {d}/fence-fails ]; then echo 'the BMC does not answer' >&2; exit 1; fi\n\
         if [ -e {d}/fence-lies ]; then exit 0; fi\n\
         [ -s {d}/agent.pid ] && kill -9 \"$(cat {d}/agent.pid)\" 2>/dev/null\n\
         for x in $(virsh -c {uri} list --name); do virsh -c {uri} destroy \"$x\" >/dev/null; done\n\
         exit 0\n",
        uri = r.lv2.uri
    );
    let path = r.fence.path().join("fence.d/test-fence");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn flag(r: &Rig, name: &str, on: bool) {
    let p = r.fence.path().join(name);
    if on {
        std::fs::write(p, "").unwrap();
    } else {
        let _ = std::fs::remove_file(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_restarts_a_fenced_nodes_guests_elsewhere_and_never_runs_two_copies() {
    let Some(mut r) = rig(144, 6230).await else {
        return;
    };
    write_fence(&r);
    let c = r.cloud.sdk().config.clone();

    // Bad input changes nothing.
    for (bad, why) in [
        (json!(["/bin/sh", "-c", "true"]), "fence directory"),
        (json!(["absent-fence"]), "does not exist"),
    ] {
        let (s, v) = r
            .cloud
            .call(
                Method::PATCH,
                "/nodes/node-b",
                Some(json!({ "fence_command": bad })),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{v}");
    }
    let b = ok("node b", nodes_api::node_get(&c, "node-b").await);
    assert!(b.fence_command.is_none(), "a refused command was kept");
    let mut set = NodeSettings::new();
    set.fence_command = Some(vec!["test-fence".into(), "{node}".into()]);
    ok("fence", nodes_api::node_update(&c, "node-b", set).await);

    // The HA guest, on b.
    let name = format!("ha{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let _sweep = Sweep(name.clone());
    let (gid, op) = r
        .cloud
        .create(
            json!({"name": name, "template": "gi", "cpus": 1, "memory_mib": 128, "node": "node-b"}),
        )
        .await[0]
        .clone();
    assert_eq!(r.cloud.wait_op(&op).await["state"], "succeeded");
    let (s, v) = r
        .cloud
        .call_as(
            &r.cloud.new_user("mallory").await,
            Method::PUT,
            &format!("/guests/{gid}/ha"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, 404, "another user's guest: {v}");
    let set = ok(
        "ha",
        guests_api::guest_set_ha(&c, &gid, GuestHa::new(true)).await,
    );
    assert_eq!(
        r.cloud.wait_op(&set.operation_id).await["state"],
        "succeeded"
    );
    let g = ok("guest", guests_api::guest_get(&c, &gid).await);
    assert!(g.ha);
    assert!(r
        .lv2
        .virsh(&["dumpxml", &name])
        .1
        .contains("urn:corral:ha:1"));
    wait_agent(&r.lv2.uri, &name);
    let watch = Watch::start(&r.lv2.uri, &name);

    // 1. b's agent dies, its fence fails: nothing restarts.
    flag(&r, "fence-fails", true);
    kill_b(&mut r);
    let reason = |c: &corral_client::apis::configuration::Configuration| {
        let c = c.clone();
        let gid = gid.clone();
        async move {
            guests_api::guest_get(&c, &gid)
                .await
                .ok()
                .and_then(|g| g.state_reason)
                .unwrap_or_default()
        }
    };
    let t0 = Instant::now();
    loop {
        if reason(&c).await.contains("fence failed") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no failed fence reported: {}",
            r.cloud.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let g = ok("guest", guests_api::guest_get(&c, &gid).await);
    let why = g.state_reason.clone().unwrap_or_default();
    assert!(why.contains("BMC does not answer"), "{why}");
    assert_eq!(g.state, GuestState::Unknown, "{g:?}");
    assert_eq!(g.node_id.as_deref(), Some("node-b"));
    assert!(
        running(&r.lv2.uri, &name) && !running(A, &name),
        "moved without a fence"
    );
    eprintln!("fence failed: the guest stays unknown on b: {why}");

    // 2. b is lost for good: the fence confirms, the guest runs on a.
    flag(&r, "fence-fails", false);
    start_b(&mut r).await;
    let t0 = Instant::now();
    loop {
        let g = ok("guest", guests_api::guest_get(&c, &gid).await);
        if g.state == GuestState::Running && g.state_reason.is_none() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "b never reported it: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = r.cloud.extra_nodes[0].child.id();
    std::fs::write(r.fence.path().join("agent.pid"), pid.to_string()).unwrap();
    let lost = Instant::now();
    kill_b(&mut r);
    assert!(r.lv2.virsh(&["destroy", &name]).0);
    let up = must(
        &r,
        "the guest runs on a",
        until(180, || running(A, &name)).await,
    );
    let restart = up - lost;
    // The record follows once the start is reported (the failover's last step).
    let t0 = Instant::now();
    loop {
        let g = ok("guest", guests_api::guest_get(&c, &gid).await);
        if g.node_id.as_deref() == Some(r.node_a.as_str()) && g.state == GuestState::Running {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the record: {g:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(r.fence.path().join("fence.log")).unwrap();
    assert!(log.contains("fence node-b"), "{log}");
    wait_agent(A, &name);
    // b returns: its old definition goes, and never starts.
    std::fs::remove_file(r.fence.path().join("agent.pid")).unwrap();
    start_b(&mut r).await;
    must(
        &r,
        "b's old definition removed",
        until(120, || !r.lv2.virsh(&["domstate", &name]).0).await,
    );
    let b = ok("node b", nodes_api::node_get(&c, "node-b").await);
    assert!(b.fenced_at.is_some(), "{b:?}");

    // 3. Back to b, then b is partitioned and its fence confirms without acting: b
    // stops the guest itself before a starts it.
    let mut m = MigrateGuest::new();
    m.node_id = Some("node-b".into());
    let op = ok("migrate", guests_api::guest_migrate(&c, &gid, m).await).operation_id;
    let end = r.cloud.wait_op(&op).await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert!(running(&r.lv2.uri, &name));
    flag(&r, "fence-lies", true);
    // The controller also dies as it starts the guest on a, and comes back.
    let fault = "dispatched:guest.failover:start";
    r.cloud.arm_fault(fault).await;
    let cut = Instant::now();
    r.redis.sever();
    r.api.sever();
    let stopped = must(
        &r,
        "b stops the guest itself",
        until(60, || !running(&r.lv2.uri, &name)).await,
    );
    r.cloud.restart_after_fault(fault).await;
    let started = must(
        &r,
        "the guest runs on a again",
        until(180, || running(A, &name)).await,
    );
    assert!(stopped < started);
    assert!(
        r.cloud.extra_nodes[0].child.try_wait().unwrap().is_none(),
        "b's agent must stay alive through the partition"
    );
    let self_fenced = stopped - cut;
    assert!(
        self_fenced < Duration::from_secs(NODE_TIMEOUT_SECS + HA_AFTER_SECS),
        "b stopped its guest only after {self_fenced:?}"
    );
    r.redis.heal();
    r.api.heal();
    must(
        &r,
        "b's old definition removed after the partition",
        until(120, || !r.lv2.virsh(&["domstate", &name]).0).await,
    );
    assert!(running(A, &name) && !running(&r.lv2.uri, &name));

    let (samples, both) = watch.finish();
    assert!(both.is_empty(), "the guest ran on both nodes at {both:?}");
    let detection = Duration::from_secs(NODE_TIMEOUT_SECS + HA_AFTER_SECS);
    eprintln!(
        "FIGURES HA: node loss to the guest running on a: {restart:?} against a configured \
         detection time of {detection:?} ({:.2}x); partition: b stopped its guest after \
         {self_fenced:?} (self_fence_secs {SELF_FENCE_SECS}), a started it {:?} after the \
         cut; never on both in {samples} samples of virsh list on both daemons",
        restart.as_secs_f64() / detection.as_secs_f64(),
        started - cut,
    );
}
