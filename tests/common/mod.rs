//! Test harness: a private Redis per test, corral processes (the real binary), and the
//! Rust SDK (`corral_client`) as the client. Every resource is named per test run and
//! removed on drop.
//!
//! The helpers (log in, templates, pools, creating guests, waiting for operations, leak
//! checks) go through the SDK, as any program using corral would. `call`/`get`/`post`/
//! `delete` send raw HTTP and return the status and JSON: tests use them where the wire
//! itself is under test (status codes, bad input an SDK cannot even express, headers, SSE).
//!
//! A test that cannot get a real part (no `redis-server`, no libvirt) says so loudly and
//! returns; under CI (`CI=true`) a missing part is a failure, never a silent skip.
#![allow(dead_code, clippy::unwrap_used)]

pub mod browser;
pub mod guest;
pub mod host;
pub mod vnc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use corral_client::apis::{guests_api, nodes_api, operations_api, resources_api, users_api};
use corral_client::models::{
    CreateGuest, CreatePool, CreateTemplate, EnrollNode, NewUser, OsType, UserRole,
};
use corral_client::session::Session;
use serde_json::{json, Value};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

/// Returns false (after a loud message) when `tool` is missing and we are not in CI.
pub fn require(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").is_ok() {
            panic!("{tool} is required in CI and is missing");
        }
        eprintln!("SKIPPED: {tool} is not installed; this test needs it");
    }
    found
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server with append-only persistence in its own directory.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: dir.join("redis"),
            child: None,
        };
        std::fs::create_dir_all(&r.dir).unwrap();
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills Redis hard (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A corral process; killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Waits for the process to end by itself (e.g. an injected fault).
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the test guest image is built (`tests/fixtures/build-test-guest.sh`).
pub fn fixture_dir() -> PathBuf {
    std::env::var("CORRAL_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures"))
}

/// A corral installation under one temporary directory.
pub struct Cloud {
    pub tmp: tempfile::TempDir,
    pub redis: Redis,
    pub port: u16,
    pub node_id: String,
    pub controller: Option<Proc>,
    pub node: Option<Proc>,
    /// More simulated nodes (each its own process and test-driver hypervisor).
    pub extra_nodes: Vec<Proc>,
    pub hypervisor_uri: String,
    pub extra_env: Vec<(String, String)>,
    /// Each enrolled node's `redis_url` (its own Redis user), by node id.
    pub node_urls: std::collections::HashMap<String, String>,
    http: reqwest::Client,
    token: String,
    /// The SDK's session, logged in as the administrator.
    session: Option<Session>,
}

impl Cloud {
    fn base(hypervisor_uri: &str) -> Cloud {
        let tmp = tempfile::Builder::new()
            .prefix("corral-test-")
            .tempdir()
            .unwrap();
        let redis = Redis::start(tmp.path());
        Cloud {
            redis,
            port: free_port(),
            node_id: format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            controller: None,
            node: None,
            extra_nodes: vec![],
            hypervisor_uri: hypervisor_uri.into(),
            extra_env: vec![],
            node_urls: Default::default(),
            http: reqwest::Client::new(),
            token: String::new(),
            session: None,
            tmp,
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn images(&self) -> PathBuf {
        self.dir().join("images")
    }

    /// The controller's database, read-only, for checks the API does not show.
    pub async fn db(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!(
            "sqlite://{}?mode=ro",
            self.dir().join("corral.db").display()
        ))
        .await
        .unwrap()
    }

    /// The path of guest `gid`'s system disk, as its record says.
    pub async fn system_disk(&self, gid: &str) -> String {
        let (_, g) = self.get(&format!("/guests/{gid}")).await;
        g["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == "system")
            .unwrap_or_else(|| panic!("guest {gid} has no system disk: {g}"))["path"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CORRAL_LOG", "info,sqlx=warn,apalis=warn,apalis_redis=warn")
            .env("CORRAL_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("CORRAL_DATABASE", self.dir().join("corral.db"))
            .env("CORRAL_DATA_DIR", self.dir())
            .env("CORRAL_STORAGE_DIR", self.images())
            .env("CORRAL_REDIS_URL", self.redis.url())
            .env("CORRAL_HYPERVISOR_URI", &self.hypervisor_uri)
            .env("CORRAL_NODE_ID", &self.node_id)
            .env("CORRAL_ADMIN_PASSWORD", "test-admin-pw")
            // Templates come from the test's directory and the fixture image's.
            .env(
                "CORRAL_IMAGE_DIRS",
                format!("{},{}", self.dir().display(), fixture_dir().display()),
            )
            .env("CORRAL_STEP_LEASE_SECS", "5")
            .env("CORRAL_NODE_TIMEOUT_SECS", "6")
            .env("CORRAL_HEARTBEAT_SECS", "1")
            .env("CORRAL_RECONCILE_SECS", "2")
            // Test-driver guests use no CPU or memory; tests of capacity set their own.
            .env("CORRAL_CPU_OVERCOMMIT", "64")
            // The host's load average is whatever else runs on the test machine (a build,
            // a benchmark, the other test thread), not an input of any test: placement by
            // load is a unit test (`placement.rs`).
            .env("CORRAL_PLACEMENT_MAX_LOAD_PER_CPU", "1000000")
            .env("CORRAL_MEMORY_OVERCOMMIT", "4");
        if args[0] == "agent" {
            // A node reports through its own Redis user, given at enrollment.
            let id = extra
                .iter()
                .find(|(k, _)| *k == "CORRAL_NODE_ID")
                .map_or(self.node_id.as_str(), |(_, v)| *v);
            let url = self
                .node_urls
                .get(id)
                .unwrap_or_else(|| panic!("node {id} is not enrolled: call Cloud::enroll first"));
            c.env("CORRAL_REDIS_URL", url);
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("{}.log", args[0])))
            .unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        c
    }

    /// Controller and node as separate processes (for crash tests).
    pub async fn split(hypervisor_uri: &str) -> Cloud {
        Cloud::split_with(hypervisor_uri, vec![]).await
    }

    /// Like [`Cloud::split`], with extra environment for both processes.
    pub async fn split_with(hypervisor_uri: &str, env: Vec<(String, String)>) -> Cloud {
        let mut c = Cloud::base(hypervisor_uri);
        c.extra_env = env;
        c.start_controller(&[]).await;
        let id = c.node_id.clone();
        c.enroll(&id).await;
        c.start_node(&[]);
        c.wait_node_online().await;
        c
    }

    /// Enrolls node `id` (`POST /nodes`) and keeps its `redis_url` for starting it.
    pub async fn enroll(&mut self, id: &str) {
        let cred = nodes_api::node_enroll(self.c(), EnrollNode::new(id.into()))
            .await
            .unwrap_or_else(|e| panic!("enrolling {id}: {}", sdk_error(e)));
        self.node_urls.insert(id.to_string(), cred.redis_url);
    }

    /// `corral up`: both roles in one process.
    pub async fn up() -> Cloud {
        Cloud::up_with(vec![]).await
    }

    /// [`Cloud::up`] with extra environment.
    pub async fn up_with(env: Vec<(String, String)>) -> Cloud {
        let mut c = Cloud::base("test:///default");
        c.extra_env = env;
        let child = c
            .command(&["up", "--data-dir", c.dir().to_str().unwrap()], &[])
            .spawn()
            .unwrap();
        c.controller = Some(Proc { child, name: "up" });
        c.login().await;
        c.wait_node_online().await;
        c
    }

    pub fn start_node(&mut self, extra: &[(&str, &str)]) {
        let child = self.command(&["agent"], extra).spawn().unwrap();
        self.node = Some(Proc {
            child,
            name: "node",
        });
    }

    /// Starts another node process named `id` and waits until it is online.
    pub async fn add_node(&mut self, id: &str, extra: &[(&str, &str)]) {
        if !self.node_urls.contains_key(id) {
            self.enroll(id).await;
        }
        let mut env = vec![("CORRAL_NODE_ID", id)];
        env.extend_from_slice(extra);
        let child = self.command(&["agent"], &env).spawn().unwrap();
        self.extra_nodes.push(Proc {
            child,
            name: "node",
        });
        for _ in 0..300 {
            let (s, v) = self.get(&format!("/nodes/{id}")).await;
            if s == 200 && v["online"] == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {id} never came online");
    }

    pub async fn start_controller(&mut self, extra: &[(&str, &str)]) {
        let child = self.command(&["controller"], extra).spawn().unwrap();
        self.controller = Some(Proc {
            child,
            name: "controller",
        });
        self.login().await;
    }

    /// Starts the controller and returns without waiting for the API (it may abort early).
    pub fn spawn_controller(&mut self, extra: &[(&str, &str)]) {
        let child = self.command(&["controller"], extra).spawn().unwrap();
        self.controller = Some(Proc {
            child,
            name: "controller",
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1{path}", self.port)
    }

    pub async fn login(&mut self) {
        for _ in 0..300 {
            if let Ok(s) = Session::login(&self.url(""), "admin", "test-admin-pw").await {
                self.token = s.config.bearer_access_token.clone().unwrap_or_default();
                self.session = Some(s);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the API did not come up; logs in {}", self.dir().display());
    }

    /// The SDK session (after `login`).
    pub fn sdk(&self) -> &Session {
        self.session.as_ref().expect("not logged in")
    }

    fn c(&self) -> &corral_client::apis::configuration::Configuration {
        &self.sdk().config
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    /// A call with another token.
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a user with role `user` and returns a token of theirs.
    pub async fn new_user(&self, name: &str) -> String {
        let pw = format!("{name}-password-1");
        users_api::user_create(
            self.c(),
            NewUser::new(name.into(), pw.clone(), UserRole::User),
        )
        .await
        .unwrap_or_else(|e| panic!("user {name}: {}", sdk_error(e)));
        let s = Session::login(&self.url(""), name, &pw)
            .await
            .unwrap_or_else(|e| panic!("login of {name}: {e}"));
        s.config.bearer_access_token.clone().unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    pub async fn wait_node_online(&self) {
        for _ in 0..300 {
            if nodes_api::node_get(self.c(), &self.node_id)
                .await
                .is_ok_and(|n| n.online)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "node {} never came online; logs in {}",
            self.node_id,
            self.dir().display()
        );
    }

    /// Waits for an operation to end; returns it (as JSON, for the tests' assertions).
    pub async fn wait_op(&self, id: &str) -> Value {
        // Ten minutes; less when debugging a hang (`CORRAL_TEST_WAIT_ROUNDS`, 5 s each).
        let rounds: u32 = std::env::var("CORRAL_TEST_WAIT_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(120);
        for _ in 0..rounds {
            let op = match operations_api::operation_wait(self.c(), id, Some(5)).await {
                Ok(op) => op,
                Err(e) => panic!(
                    "waiting for {id}: {}",
                    corral_client::session::SessionError::from(e)
                ),
            };
            if matches!(op.state.as_str(), "succeeded" | "failed" | "cancelled") {
                return serde_json::to_value(op).unwrap();
            }
        }
        let (_, v) = self.get(&format!("/operations/{id}")).await;
        panic!(
            "operation {id} did not finish in 10 minutes: {v}\n{}",
            self.log_tail(40)
        );
    }

    /// The last `n` lines of each process log, for a failing test's message.
    pub fn log_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for name in ["up", "controller", "agent"] {
            if let Ok(text) = std::fs::read_to_string(self.dir().join(format!("{name}.log"))) {
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!("--- {name}.log\n"));
                out.push_str(&lines[lines.len().saturating_sub(n)..].join("\n"));
                out.push('\n');
            }
        }
        out
    }

    /// Registers a template backed by a small qcow2 image made here.
    pub async fn template(&self, name: &str) -> Value {
        let path = self.dir().join(format!("{name}.qcow2"));
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("16M")
            .status()
            .unwrap()
            .success();
        assert!(ok, "qemu-img create failed");
        let t = resources_api::template_create(
            self.c(),
            CreateTemplate::new(name.into(), OsType::Linux, path.display().to_string()),
        )
        .await
        .unwrap_or_else(|e| panic!("template {name}: {}", sdk_error(e)));
        serde_json::to_value(t).unwrap()
    }

    pub async fn pool(&self, name: &str, start: &str, end: &str) -> Value {
        let mut p = CreatePool::new("192.0.2.0/24".into(), name.into(), end.into(), start.into());
        p.gateway = Some("192.0.2.1".into());
        p.dns = Some(vec!["192.0.2.1".into()]);
        let p = resources_api::pool_create(self.c(), p)
            .await
            .unwrap_or_else(|e| panic!("pool {name}: {}", sdk_error(e)));
        serde_json::to_value(p).unwrap()
    }

    /// Creates guests from a `POST /guests` body and returns the accepted (guest_id,
    /// operation_id) pairs. A field the SDK's model does not know fails the test rather than
    /// being dropped.
    pub async fn create(&self, body: Value) -> Vec<(String, String)> {
        let g: CreateGuest = serde_json::from_value(body.clone()).unwrap();
        let sent = serde_json::to_value(&g).unwrap();
        for k in body.as_object().unwrap().keys() {
            assert!(
                sent.get(k).is_some() || body[k].is_null(),
                "the SDK's CreateGuest has no field {k:?}"
            );
        }
        let accepted = guests_api::guest_create(self.c(), g)
            .await
            .unwrap_or_else(|e| panic!("create {body}: {}", sdk_error(e)));
        accepted
            .operations
            .into_iter()
            .map(|a| (a.guest_id, a.operation_id))
            .collect()
    }

    pub fn image_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.images()) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Restarts the controller with `CORRAL_FAULT=fault`: it aborts at that point.
    pub async fn arm_fault(&mut self, fault: &str) {
        self.controller.take().unwrap().kill9();
        self.start_controller(&[("CORRAL_FAULT", fault)]).await;
    }

    /// Waits for the armed fault to abort the controller, then starts a clean one.
    pub async fn restart_after_fault(&mut self, fault: &str) {
        assert!(
            self.controller
                .as_mut()
                .unwrap()
                .wait_exit(Duration::from_secs(30)),
            "fault {fault} never fired"
        );
        self.start_controller(&[]).await;
    }

    /// Deletes every guest (each delete must succeed), then checks nothing is left.
    pub async fn delete_all_and_check(&self) {
        let guests = guests_api::guest_list(self.c(), None, None, None, Some(1000), None)
            .await
            .unwrap();
        let mut ops = Vec::new();
        for g in guests {
            let a = guests_api::guest_delete(self.c(), &g.id)
                .await
                .unwrap_or_else(|e| panic!("delete {}: {}", g.name, sdk_error(e)));
            ops.push(a.operation_id);
        }
        for op in ops {
            let v = self.wait_op(&op).await;
            assert_eq!(v["state"], "succeeded", "delete: {v}");
        }
        self.assert_no_leaks().await;
    }

    /// Every lease, guest and image must be gone.
    pub async fn assert_no_leaks(&self) {
        let guests = guests_api::guest_list(self.c(), None, None, None, Some(1000), None)
            .await
            .unwrap();
        assert!(guests.is_empty(), "guests left: {guests:?}");
        for p in resources_api::pool_list(self.c()).await.unwrap() {
            assert_eq!(p.used, 0, "pool {} still has leases", p.name);
        }
        assert_eq!(
            self.image_files(),
            Vec::<String>::new(),
            "files left in the disk-image directory"
        );
        let node = nodes_api::node_get(self.c(), &self.node_id).await.unwrap();
        assert_eq!(node.guests, 0);
    }
}

/// An SDK error as the server's status and message.
pub fn sdk_error<T>(e: corral_client::apis::Error<T>) -> corral_client::session::SessionError {
    e.into()
}

impl Cloud {
    /// The event log's entries of `kind` so far (`data` of each).
    pub async fn events(&self, kind: &str) -> Vec<Value> {
        let mut resp = self
            .http
            .get(self.url("/events?after=0"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let mut buf = String::new();
        read_sse(&mut resp, &mut buf, 100_000, Duration::from_secs(2))
            .await
            .into_iter()
            .filter(|(_, e)| e["kind"] == kind)
            .map(|(_, e)| e["data"].clone())
            .collect()
    }
}

/// Reads SSE events (id, data) from `resp` until `n` arrive or `timeout` passes.
pub async fn read_sse(
    resp: &mut reqwest::Response,
    buf: &mut String,
    n: usize,
    timeout: Duration,
) -> Vec<(i64, Value)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            _ => break,
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                out.push((id, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    out
}
