//! `corral bench`: measured figures, printed, never asserted.
//!
//! Everything runs on this machine, in a temporary directory, against real parts: a private
//! Redis, `corral controller` and `corral agent` child processes, libvirt's test driver and —
//! with `--tcg FIXTURE` — a real TCG guest on `qemu:///system`.
//!
//! 1. raw test-driver define+start rate (in-process, same domain XML corral renders);
//! 2. `guest.create` operations per second end to end through the API (test driver);
//! 3. RSS of the idle node and of the controller holding `--rss-guests` guests;
//! 4. with `--tcg`: API → running and API → guest agent, each next to the same steps done
//!    directly (`qemu-img create -b`, `virsh define`, `virsh start`), and the latency from a
//!    libvirt lifecycle event (`virsh suspend`/`resume`) to an SSE client, p50/p99;
//! 5. `--reads`: the list endpoints under 64 connections, empty and with N records, as
//!    ratios to `GET /about` in the same run (see [`reads`]);
//! 6. metric history at 100 nodes × 100 guests every 15 s: controller CPU, write rate,
//!    storage per guest per day, a 15-day query, `/metrics` (see `metrics.rs`).

mod agent;
mod metrics;
pub mod reads;
mod scripts;
mod storage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use corral_client::apis::configuration::Configuration;
use corral_client::apis::{guests_api, nodes_api, operations_api, resources_api};
use corral_client::models::{
    AttachDisk, CreateDisk, CreateGuest, CreatePool, CreateTemplate, EnrollNode, NodeSettings,
    OsType,
};
use corral_client::session::Session;

use corral::model::DomainSpec;
use corral::render::{val, Renderer};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("api: {0}")]
    Api(#[from] corral_client::session::SessionError),
}

impl<T> From<corral_client::apis::Error<T>> for BenchError {
    fn from(e: corral_client::apis::Error<T>) -> Self {
        BenchError::Api(e.into())
    }
}

/// A private Redis on `port` with a password, its data in `dir`, as `corral up` starts
/// one: the URL (carrying the password) and the guard that stops it.
pub(crate) async fn private_redis(
    port: u16,
    dir: &Path,
) -> Result<(String, Option<corral::up::supervise::Supervisor>), BenchError> {
    let backoff = corral::up::supervise::Backoff::new(&corral::config::UpConfig::default());
    corral::up::ensure_redis(&format!("redis://127.0.0.1:{port}/"), dir, backoff)
        .await
        .map_err(setup("redis"))
}

/// An empty 16 MiB qcow2 at `path`: a template image the bench makes for itself, so it
/// needs nothing a machine had before the run.
pub(crate) async fn blank_qcow2(path: &Path) -> Result<(), BenchError> {
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("16M")
        .status()
        .await?
        .success();
    if ok {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "qemu-img create {} failed",
            path.display()
        )))
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

pub struct BenchOpts {
    /// Evaluations per shipped script for the script-cost figures (0: skip).
    pub scripts: usize,
    /// Only the script-cost figures.
    pub scripts_only: bool,
    pub guests: usize,
    pub rss_guests: usize,
    pub raw: usize,
    pub tcg: Option<PathBuf>,
    pub events: usize,
    /// Simulated nodes for the fleet figures (0: skip).
    pub fleet: usize,
    /// Records of each kind for the read figures (0: skip).
    pub reads: usize,
    /// Only the read figures.
    pub reads_only: bool,
    /// Timed seconds per endpoint for the read figures.
    pub reads_secs: f64,
    /// Only the storage figures.
    pub storage_only: bool,
    /// The storage figures as well (after the others).
    pub storage: bool,
    /// Rounds of the metrics figures, 15 s apart (0: skip).
    pub metrics_rounds: usize,
    /// Only the metrics figures.
    pub metrics_only: bool,
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime, stime in clock ticks (USER_HZ = 100)
}

/// Creates `n` guests through the API in batches of 100 and waits for all of them.
/// Returns the rate (ops/s) and the controller's CPU per create (ms).
async fn timed_creates(
    api: &Api,
    n: usize,
    made: &mut usize,
    ctl_pid: u32,
) -> Result<(f64, f64), BenchError> {
    let cpu0 = cpu_secs(ctl_pid);
    let t0 = Instant::now();
    let mut ops = Vec::new();
    let end = *made + n;
    while *made < end {
        let k = (end - *made).min(100);
        ops.extend(api.create(json!({"name": format!("b{made}"), "template": "b", "cpus": 1, "memory_mib": 64, "count": k})).await?);
        *made += k;
    }
    let mut failed = 0;
    for op in &ops {
        if api.wait(op).await?["state"] != "succeeded" {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(BenchError::Setup(format!("{failed} of {n} creates failed")));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_ms = (cpu_secs(ctl_pid) - cpu0) * 1000.0 / n.max(1) as f64;
    Ok((n as f64 / secs, cpu_ms))
}

/// Placement decisions per second of the pure placement logic: a batch of `guests` over
/// `nodes` candidates, updating the accounting after each decision as the saga does.
fn placement_rate(nodes: usize, guests: usize) -> f64 {
    use corral::controller::placement::{place, Candidate, Thresholds};
    let mut c: Vec<Candidate> = (0..nodes)
        .map(|i| Candidate {
            id: format!("n{i:03}"),
            online: true,
            accept_auto: true,
            cpus: 32,
            memory_mib: 262_144,
            load1: 1.0,
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            used_memory_mib: (i as u64 % 7) * 1024,
            used_vcpus: 0,
            guests: 0,
            bridges: None,
        })
        .collect();
    let t = Thresholds {
        max_memory_pct: 90.0,
        max_load_per_cpu: 4.0,
    };
    let t0 = Instant::now();
    for _ in 0..guests {
        let need = corral::controller::placement::Need {
            memory_mib: 1024,
            cpus: 1,
            bridge: None,
        };
        if let Ok(id) = place(&c, need, None, &t) {
            if let Some(n) = c.iter_mut().find(|n| n.id == id) {
                n.used_memory_mib += 1024;
                n.used_vcpus += 1;
                n.guests += 1;
            }
        }
    }
    guests as f64 / t0.elapsed().as_secs_f64()
}

/// Simulated nodes: heartbeats every 5 s through the real stream, for `secs`; returns the
/// controller's CPU share and RSS over that time, and the place-step rate for a batch of
/// `guests` spread over those nodes through the API.
async fn fleet(
    api: &Api,
    redis_url: &str,
    ctl_pid: u32,
    nodes: usize,
    guests: usize,
) -> Result<(), BenchError> {
    // Enrolled like real nodes, so the controller reads their streams; the bench writes
    // those streams with the controller's own Redis access.
    for i in 0..nodes {
        nodes_api::node_enroll(api.c(), EnrollNode::new(format!("sim-{i:03}"))).await?;
    }
    let beats = spawn_heartbeats(redis_url.to_string(), nodes);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Only the simulated nodes take guests from now on.
    let mut no_auto = NodeSettings::new();
    no_auto.accept_auto = Some(false);
    nodes_api::node_update(api.c(), "bench-test", no_auto).await?;
    heartbeat_load(ctl_pid, nodes).await;
    placed_batch(api, nodes, guests).await?;
    beats.abort();
    Ok(())
}

/// The simulated nodes `sim-000`… heartbeat every 5 s for the whole measurement, until the
/// task answered is aborted.
fn spawn_heartbeats(url: String, nodes: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut conn) = corral::transport::connect(&url).await else {
            return;
        };
        loop {
            for i in 0..nodes {
                let ev = sim_heartbeat(i);
                let _ = corral::transport::publish(&mut conn, &format!("sim-{i:03}"), &ev).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

/// One heartbeat of simulated node `i`: a large, lightly loaded host.
fn sim_heartbeat(i: usize) -> corral::model::NodeEvent {
    use corral::model::{NodeEvent, NodeFacts};
    NodeEvent::Heartbeat {
        node_id: format!("sim-{i:03}"),
        facts: Box::new(NodeFacts {
            hostname: format!("sim-{i:03}"),
            domain_type: "kvm".into(),
            cpus: 32,
            memory_mib: 262_144,
            free_memory_mib: 200_000,
            load1: 1.0,
            storage_dir: "/var/lib/corral/images".into(),
            bridge: "corral0".into(),
            vnc_ports: Some((5900, 6899)),
            ..Default::default()
        }),
        at_ms: corral::model::now_ms(),
    }
}

/// Prints the controller's CPU share and RSS over 30 s of `nodes` heartbeating.
async fn heartbeat_load(ctl_pid: u32, nodes: usize) {
    let cpu0 = cpu_secs(ctl_pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let share = (cpu_secs(ctl_pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "controller with {nodes} nodes heartbeating every 5 s: {share:>6.2} % of one core, RSS {:.1} MiB (30 s)",
        rss_mib(ctl_pid)
    );
}

/// A batch through the API: prints the time until every guest has passed its place step,
/// and how the guests spread over the nodes.
async fn placed_batch(api: &Api, nodes: usize, guests: usize) -> Result<(), BenchError> {
    let t0 = Instant::now();
    let mut made = 0;
    while made < guests {
        let n = (guests - made).min(100);
        api.create(json!({"name": format!("f{made}"), "template": "b", "cpus": 1, "memory_mib": 64, "count": n}))
            .await?;
        made += n;
    }
    let placed = loop {
        let (placed, total) = placed_counts(api).await?;
        if total >= guests || t0.elapsed() > Duration::from_secs(600) {
            break placed;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    let (min, max) = (
        placed.values().min().copied().unwrap_or(0),
        placed.values().max().copied().unwrap_or(0),
    );
    println!(
        "batch of {guests} over {nodes} nodes, API to placed:  {:>8.0} decisions/s  ({secs:.1} s; {} nodes used, {min}–{max} guests each)",
        guests as f64 / secs,
        placed.len()
    );
    Ok(())
}

/// The batch's guests (named `f…`) placed so far, per node, and their total.
async fn placed_counts(api: &Api) -> Result<(HashMap<String, usize>, usize), BenchError> {
    let mut placed: HashMap<String, usize> = HashMap::new();
    let mut offset = 0;
    let mut total = 0;
    loop {
        let page =
            guests_api::guest_list(api.c(), None, None, None, Some(1000), Some(offset)).await?;
        for g in &page {
            if let (Some(n), true) = (&g.node_id, g.name.starts_with('f')) {
                *placed.entry(n.clone()).or_default() += 1;
                total += 1;
            }
        }
        if page.len() < 1000 {
            break;
        }
        offset += 1000;
    }
    Ok((placed, total))
}

/// The file name of process `pid`'s executable: which agent binary the figure is of.
fn exe_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown binary".into())
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn spec(i: usize, dir: &Path) -> DomainSpec {
    DomainSpec {
        guest_id: uuid::Uuid::new_v4().to_string(),
        name: format!("raw-{i}"),
        cpus: 1,
        memory_mib: 128,
        max_cpus: 0,
        max_memory_mib: 0,
        windows: false,
        disk_path: dir.join("raw.qcow2").display().to_string(),
        seed_path: dir.join("raw-seed.iso").display().to_string(),
        mac: corral::controller::alloc::random_mac(),
        bridge: "corral0".into(),
        bandwidth: None,
        vlan: None,
        vnc_port: 5900,
        ha: false,
    }
}

fn render_domain(r: &Renderer, s: &DomainSpec, domain_type: &str) -> Result<String, BenchError> {
    r.render(
        "domain.xml",
        minijinja::context! { spec => val(s), domain_type => domain_type, machine => "pc",
        vnc_listen => "127.0.0.1", tcg_cache_mib => 32, emulator => None::<String>,
        vnc_password => "unused" },
    )
    .map_err(setup("render"))
}

/// Raw define+start rate on an in-process test driver.
async fn raw_rate(n: usize, dir: &Path) -> Result<f64, BenchError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let r = Renderer::new(None).map_err(setup("renderer"))?;
        let conn =
            virt::connect::Connect::open(Some("test:///default")).map_err(setup("test driver"))?;
        let xmls: Vec<String> = (0..n)
            .map(|i| render_domain(&r, &spec(i, &dir), "test"))
            .collect::<Result<_, _>>()?;
        let t0 = Instant::now();
        let mut doms = Vec::with_capacity(n);
        for x in &xmls {
            let d = conn.define_domain_xml(x).map_err(setup("define"))?;
            d.create().map_err(setup("start"))?;
            doms.push(d);
        }
        let secs = t0.elapsed().as_secs_f64();
        for d in doms {
            let _ = d.destroy();
            let _ = d.undefine();
        }
        Ok(n as f64 / secs)
    })
    .await
    .map_err(setup("raw task"))?
}

/// The same work a create does, by hand and in sequence: linked-clone disk (`qemu-img`),
/// seed ISO (`genisoimage`), define, start — on the in-process test driver.
async fn raw_full_rate(n: usize, dir: &Path, template: &Path) -> Result<f64, BenchError> {
    let r = Renderer::new(None).map_err(setup("renderer"))?;
    let seed_src = dir.join("rawseed");
    std::fs::create_dir_all(&seed_src)?;
    std::fs::write(seed_src.join("meta-data"), "instance-id: \"x\"\n")?;
    std::fs::write(seed_src.join("user-data"), "#cloud-config\n")?;
    let conn =
        virt::connect::Connect::open(Some("test:///default")).map_err(setup("test driver"))?;
    let tpl = template.display().to_string();
    let t0 = Instant::now();
    let mut doms = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = spec(i, dir);
        s.disk_path = dir.join(format!("rawfull-{i}.qcow2")).display().to_string();
        s.seed_path = dir.join(format!("rawfull-{i}.iso")).display().to_string();
        sh(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                &tpl,
                &s.disk_path,
            ],
        )
        .await?;
        sh(
            "genisoimage",
            &[
                "-quiet",
                "-output",
                &s.seed_path,
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                &seed_src.join("meta-data").display().to_string(),
                &seed_src.join("user-data").display().to_string(),
            ],
        )
        .await?;
        let d = conn
            .define_domain_xml(&render_domain(&r, &s, "test")?)
            .map_err(setup("define"))?;
        d.create().map_err(setup("start"))?;
        doms.push(d);
    }
    let secs = t0.elapsed().as_secs_f64();
    for d in doms {
        let _ = d.destroy();
        let _ = d.undefine();
    }
    Ok(n as f64 / secs)
}

/// The bench's client: the generated SDK, through its session layer.
struct Api {
    s: Session,
}

impl Api {
    fn c(&self) -> &Configuration {
        &self.s.config
    }

    /// Creates guests from a `POST /guests` body; the operations' ids.
    async fn create(&self, body: Value) -> Result<Vec<String>, BenchError> {
        let g: CreateGuest = serde_json::from_value(body).map_err(setup("guest request"))?;
        let accepted = guests_api::guest_create(self.c(), g).await?;
        Ok(accepted
            .operations
            .into_iter()
            .map(|a| a.operation_id)
            .collect())
    }

    /// Waits for an operation to end; the operation as JSON.
    async fn wait(&self, op: &str) -> Result<Value, BenchError> {
        let op = self.s.wait(op).await?;
        serde_json::to_value(op).map_err(setup("operation"))
    }

    /// `env` with `CORRAL_REDIS_URL` set to node `id`'s own, after enrolling it.
    async fn enrolled_env<'a>(
        &self,
        env: &[(&'a str, String)],
        id: &str,
    ) -> Result<Vec<(&'a str, String)>, BenchError> {
        let cred = nodes_api::node_enroll(self.c(), EnrollNode::new(id.into())).await?;
        let mut out: Vec<_> = env
            .iter()
            .filter(|(k, _)| *k != "CORRAL_REDIS_URL")
            .cloned()
            .collect();
        out.push(("CORRAL_REDIS_URL", cred.redis_url));
        Ok(out)
    }

    async fn node_online(&self, id: &str) -> bool {
        nodes_api::node_get(self.c(), id)
            .await
            .is_ok_and(|n| n.online)
    }
}

struct Procs {
    children: Vec<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

fn corral(args: &[&str], env: &[(&str, String)], log: &Path) -> Result<Child, BenchError> {
    let exe = std::env::current_exe()?;
    let f = std::fs::File::create(log)?;
    let mut c = Command::new(exe);
    c.args(args)
        .stdout(Stdio::null())
        .stderr(f)
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    Ok(c.spawn()?)
}

/// The metrics figures' fleet: 100 nodes × 100 guests, as the issue names it.
fn metrics_opts(o: &BenchOpts) -> metrics::MetricsOpts {
    metrics::MetricsOpts {
        nodes: 100,
        guests_per_node: 100,
        rounds: o.metrics_rounds.max(2),
    }
}

pub async fn run(o: BenchOpts) -> Result<(), BenchError> {
    let tmp = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = run_in(&o, &tmp).await;
    // `CORRAL_BENCH_KEEP` keeps the run's directory (its logs and database) for diagnosis.
    if std::env::var_os("CORRAL_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

async fn run_in(o: &BenchOpts, tmp: &Path) -> Result<(), BenchError> {
    println!(
        "corral bench ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if o.metrics_only {
        return metrics::run(&metrics_opts(o), tmp).await;
    }
    if o.scripts > 0 {
        scripts::run(o.scripts).map_err(BenchError::Setup)?;
    }
    if o.scripts_only {
        return Ok(());
    }
    if o.storage_only {
        return storage::run(tmp).await;
    }
    if o.reads > 0 || o.reads_only {
        reads::run(
            &reads::ReadOpts {
                records: o.reads,
                secs: o.reads_secs,
            },
            tmp,
        )
        .await?;
    }
    if o.reads_only {
        return Ok(());
    }
    if o.metrics_rounds > 0 {
        metrics::run(&metrics_opts(o), tmp).await?;
    }
    let raw = raw_rate(o.raw, tmp).await?;
    println!(
        "raw test driver define+start:          {raw:>10.0} domains/s  ({} domains)",
        o.raw
    );
    let mut rig = Rig::start(o, tmp).await?;
    let full = bench_resources(&rig.api, tmp).await?;
    create_figures(&rig, o, raw, full).await?;
    if o.fleet > 0 {
        println!(
            "placement logic, 1000 guests over {} nodes: {:>10.0} decisions/s",
            o.fleet,
            placement_rate(o.fleet, 1000)
        );
        fleet(&rig.api, &rig.redis_url, rig.ctl_pid, o.fleet, 1000).await?;
    }
    if let Some(fixture) = &o.tcg {
        // qemu-img resolves a relative backing file against the new image's directory.
        let fixture = std::fs::canonicalize(fixture)?;
        tcg(&rig.api, &rig.env, tmp, &fixture, o.events, &mut rig.procs).await?;
    }
    if o.storage {
        storage::run(tmp).await?;
    }
    Ok(())
}

/// What the end-to-end figures run against: a private Redis, `corral controller` and a
/// `corral agent` on the test driver, and a client logged in as the admin.
///
/// Fields drop in order: the client, then the child processes, then Redis.
struct Rig {
    api: Api,
    /// The controller's and the nodes' environment.
    env: Vec<(&'static str, String)>,
    procs: Procs,
    redis_url: String,
    ctl_pid: u32,
    node_pid: u32,
    _redis: Option<corral::up::supervise::Supervisor>,
}

impl Rig {
    /// Starts Redis, the controller and the test-driver node, and logs in.
    async fn start(o: &BenchOpts, tmp: &Path) -> Result<Rig, BenchError> {
        let rport = free_port()?;
        // A private Redis with a password (the URL answered carries it).
        let (redis_url, redis) = private_redis(rport, tmp).await?;
        let port = free_port()?;
        let env = bench_env(o, tmp, port, &redis_url);
        let controller = corral(&["controller"], &env, &tmp.join("controller.log"))?;
        let ctl_pid = controller.id().unwrap_or(0);
        let mut procs = Procs {
            children: vec![controller],
        };
        let api = login(&format!("http://127.0.0.1:{port}/api/v1"), tmp).await?;
        // The node reports through its own Redis user: enrolled first, started with its URL.
        let node_env = api.enrolled_env(&env, "bench-test").await?;
        let node = corral(&["agent"], &node_env, &tmp.join("node.log"))?;
        let node_pid = node.id().unwrap_or(0);
        procs.children.push(node);
        for _ in 0..100 {
            if api.node_online("bench-test").await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!(
            "corral node RSS, idle:                 {:>10.1} MiB   (budget 30 MiB; {})",
            rss_mib(node_pid),
            exe_name(node_pid)
        );
        Ok(Rig {
            api,
            env,
            procs,
            redis_url,
            ctl_pid,
            node_pid,
            _redis: redis,
        })
    }
}

/// The environment of the bench's controller and test-driver node: everything in `tmp`,
/// the API on `port`.
fn bench_env(o: &BenchOpts, tmp: &Path, port: u16, redis_url: &str) -> Vec<(&'static str, String)> {
    // Templates: the bench's own image in `tmp`, and the TCG fixture's directory.
    let mut image_dirs = tmp.display().to_string();
    if let Some(dir) = o
        .tcg
        .as_deref()
        .and_then(|f| std::fs::canonicalize(f).ok())
        .and_then(|f| f.parent().map(|d| d.display().to_string()))
    {
        image_dirs.push(',');
        image_dirs.push_str(&dir);
    }
    vec![
        ("CORRAL_LISTEN", format!("127.0.0.1:{port}")),
        ("CORRAL_IMAGE_DIRS", image_dirs),
        (
            "CORRAL_DATABASE",
            tmp.join("corral.db").display().to_string(),
        ),
        ("CORRAL_DATA_DIR", tmp.display().to_string()),
        (
            "CORRAL_STORAGE_DIR",
            tmp.join("images").display().to_string(),
        ),
        ("CORRAL_REDIS_URL", redis_url.to_string()),
        ("CORRAL_HYPERVISOR_URI", "test:///default".into()),
        ("CORRAL_NODE_ID", "bench-test".into()),
        ("CORRAL_ADMIN_PASSWORD", "bench-admin".into()),
        ("CORRAL_VNC_PORT_MAX", "65000".into()),
        // A range this wide must not go into the host's reserved ports.
        ("CORRAL_RESERVE_VNC_PORTS", "false".into()),
        // Test-driver guests use no memory or CPU: placement capacity must not cap the run.
        ("CORRAL_CPU_OVERCOMMIT", "100000".into()),
        ("CORRAL_MEMORY_OVERCOMMIT", "10000".into()),
        // `CORRAL_BENCH_LOG` sets the log filter of the bench's controller and node.
        (
            "CORRAL_LOG",
            std::env::var("CORRAL_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
}

/// Logs in to the controller at `base` as the admin, waiting up to 30 s for it to start.
async fn login(base: &str, tmp: &Path) -> Result<Api, BenchError> {
    for _ in 0..300 {
        if let Ok(s) = Session::login(base, "admin", "bench-admin").await {
            return Ok(Api { s });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Setup(format!(
        "controller did not start; see {}",
        tmp.display()
    )))
}

/// Times the by-hand baseline, then registers its template image as template `b` and a
/// pool `bench`; the baseline's rate (guests/s).
async fn bench_resources(api: &Api, tmp: &Path) -> Result<f64, BenchError> {
    let tmpl = tmp.join("tmpl.qcow2");
    blank_qcow2(&tmpl).await?;
    // Long enough (several seconds) that a moment's noise on the machine does not swing
    // the baseline every create ratio is taken against.
    const BY_HAND: usize = 500;
    let full = raw_full_rate(BY_HAND, tmp, &tmpl).await?;
    println!(
        "raw disk+seed+define+start, sequential:{full:>10.1} guests/s  ({BY_HAND} guests, by hand)"
    );
    resources_api::template_create(
        api.c(),
        CreateTemplate::new("b".into(), OsType::Linux, tmpl.display().to_string()),
    )
    .await?;
    resources_api::pool_create(
        api.c(),
        CreatePool::new(
            "198.18.0.0/15".into(),
            "bench".into(),
            "198.19.255.250".into(),
            "198.18.0.10".into(),
        ),
    )
    .await?;
    Ok(full)
}

/// The create rate on an empty cloud, next to the `raw` and by-hand (`full`) rates; the
/// same with `--rss-guests` guests present; the RSS of both processes.
async fn create_figures(rig: &Rig, o: &BenchOpts, raw: f64, full: f64) -> Result<(), BenchError> {
    let (api, ctl_pid) = (&rig.api, rig.ctl_pid);
    // End-to-end creates, in batches of 100 as a client would send them.
    let mut made = 0;
    let (rate, cpu_ms) = timed_creates(api, o.guests, &mut made, ctl_pid).await?;
    println!(
        "guest.create end to end (API, test drv): {rate:>10.1} ops/s  ({} guests; {:.3} of raw \
         define+start, {:.2} of the same work by hand; controller CPU {cpu_ms:.2} ms per create)",
        o.guests,
        rate / raw,
        rate / full
    );
    // Fill up to the RSS target, then read the controller's RSS.
    fill_to(api, o.rss_guests, &mut made).await?;
    if o.rss_guests > o.guests {
        wait_idle(api).await?;
        // The same batch again with the cloud full: a controller must not slow as it fills.
        let held = made;
        let (rate_full, cpu_full) = timed_creates(api, o.guests, &mut made, ctl_pid).await?;
        println!(
            "guest.create with {held} guests present: {rate_full:>10.1} ops/s  ({:.2} of the rate on an \
             empty cloud; controller CPU {cpu_full:.2} ms per create, {cpu_ms:.2} when empty)",
            rate_full / rate
        );
    }
    println!(
        "corral controller RSS, {:>6} guests:   {:>10.1} MiB   (node: {:.1} MiB)",
        made,
        rss_mib(ctl_pid),
        rss_mib(rig.node_pid)
    );
    Ok(())
}

/// Creates guests in batches of 100 until `target` have been made, waiting for the last
/// operation of each batch.
async fn fill_to(api: &Api, target: usize, made: &mut usize) -> Result<(), BenchError> {
    while *made < target {
        let n = (target - *made).min(100);
        let batch = api.create(json!({"name": format!("b{made}"), "template": "b", "cpus": 1, "memory_mib": 64, "count": n})).await?;
        *made += n;
        if let Some(last) = batch.last() {
            api.wait(last).await?;
        }
    }
    Ok(())
}

/// Waits until no operation is active.
async fn wait_idle(api: &Api) -> Result<(), BenchError> {
    loop {
        let active =
            operations_api::operation_list(api.c(), None, None, None, Some(true), Some(1), None)
                .await?;
        if active.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn sh(cmd: &str, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(cmd).args(args).output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// One guest-agent command through virsh; its answer (Null when it failed).
async fn agent_call(name: &str, cmd: &str) -> Result<Value, BenchError> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "qemu-agent-command", name, cmd])
        .stderr(Stdio::null())
        .output()
        .await?;
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_default())
}

/// Waits until guest `name` (through its agent) has block device `dev`.
/// How long until shell condition `cond` holds inside guest `name` (through its agent).
async fn guest_until(name: &str, cond: &str, timeout: Duration) -> Result<Duration, BenchError> {
    let t0 = Instant::now();
    let cmd = json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh",
        "arg": ["-c", cond]}})
    .to_string();
    while t0.elapsed() < timeout {
        let pid = agent_call(name, &cmd).await?["return"]["pid"].as_i64();
        if let Some(pid) = pid {
            let status =
                json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}).to_string();
            for _ in 0..50 {
                let v = agent_call(name, &status).await?;
                if v["return"]["exited"] == json!(true) {
                    if v["return"]["exitcode"] == json!(0) {
                        return Ok(t0.elapsed());
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BenchError::Setup(format!(
        "guest {name} never saw `{cond}` hold"
    )))
}

async fn agent_ready(name: &str, timeout: Duration) -> Result<Duration, BenchError> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        let ok = Command::new("virsh")
            .args([
                "-c",
                "qemu:///system",
                "qemu-agent-command",
                name,
                r#"{"execute":"guest-ping"}"#,
                "--timeout",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?
            .success();
        if ok {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Setup(format!(
        "guest agent of {name} never answered"
    )))
}

/// One real TCG guest: through corral and directly, then event latency.
async fn tcg(
    api: &Api,
    env: &[(&str, String)],
    tmp: &Path,
    fixture: &Path,
    events: usize,
    procs: &mut Procs,
) -> Result<(), BenchError> {
    let bridge = format!("crlb{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    sh("ip", &["link", "add", &bridge, "type", "bridge"]).await?;
    sh("ip", &["link", "set", &bridge, "up"]).await?;
    let result = tcg_on(api, env, tmp, fixture, events, procs, &bridge).await;
    let _ = sh("ip", &["link", "del", &bridge]).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn tcg_on(
    api: &Api,
    env: &[(&str, String)],
    tmp: &Path,
    fixture: &Path,
    events_n: usize,
    procs: &mut Procs,
    bridge: &str,
) -> Result<(), BenchError> {
    let mut direct = Vec::with_capacity(TCG_SAMPLES);
    for _ in 0..TCG_SAMPLES {
        direct.push(direct_guest(tmp, fixture, bridge).await?);
    }
    start_tcg_node(api, env, tmp, procs, bridge).await?;
    let name = api_guests(api, fixture, &direct).await?;
    let gid = live_attach(api, &name).await?;
    live_resize(api, &name, &gid).await?;
    event_latency(api, &name, &gid, events_n).await?;
    agent::run(api, &gid, 10).await?;
    let d = guests_api::guest_delete(api.c(), &gid).await?;
    api.wait(&d.operation_id).await?;
    Ok(())
}

/// TCG guests timed each way: one sample varies by a third between runs on a busy host
/// (0.95× to 1.30× seen), so the figures are medians of five with their spread.
const TCG_SAMPLES: usize = 5;

/// Times from the first to the last step of a guest made by hand, and to its agent.
#[derive(Debug, Clone, Copy)]
struct Direct {
    running: Duration,
    agent: Duration,
}

/// Direct: the same steps by hand (seed, linked clone, define, start), the same XML, on
/// `bridge`; the guest is removed again.
async fn direct_guest(tmp: &Path, fixture: &Path, bridge: &str) -> Result<Direct, BenchError> {
    let r = Renderer::new(None).map_err(setup("renderer"))?;
    let mut s = spec(0, tmp);
    s.name = format!("direct-{}", &s.guest_id[..8]);
    s.bridge = bridge.into();
    s.vnc_port = 5999;
    let disk = tmp.join("direct.qcow2");
    s.disk_path = disk.display().to_string();
    s.seed_path = tmp.join("direct-seed.iso").display().to_string();
    let docs = corral::guestinit::render_seed(&r, &direct_plan(&s)).map_err(setup("seed"))?;
    let xml_path = tmp.join("direct.xml");
    std::fs::write(&xml_path, render_domain(&r, &s, "qemu")?)?;
    let fx = fixture.display().to_string();
    let t0 = Instant::now();
    corral::guestinit::write_seed_iso(&docs, Path::new(&s.seed_path))
        .await
        .map_err(setup("seed iso"))?;
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &fx,
            &s.disk_path,
        ],
    )
    .await?;
    sh(
        "virsh",
        &[
            "-c",
            "qemu:///system",
            "define",
            &xml_path.display().to_string(),
        ],
    )
    .await?;
    sh("virsh", &["-c", "qemu:///system", "start", &s.name]).await?;
    let running = t0.elapsed();
    let agent = running + agent_ready(&s.name, Duration::from_secs(180)).await?;
    let _ = sh("virsh", &["-c", "qemu:///system", "destroy", &s.name]).await;
    let _ = sh("virsh", &["-c", "qemu:///system", "undefine", &s.name]).await;
    Ok(Direct { running, agent })
}

/// The same seed a corral guest gets (static address, so no DHCP wait in the guest); the
/// direct guest writes it in the timed section like corral's build_seed step.
fn direct_plan(s: &DomainSpec) -> corral::guestinit::InitPlan {
    corral::guestinit::InitPlan {
        instance_id: s.guest_id.clone(),
        hostname: "direct".into(),
        users: vec![],
        network: Some(corral::guestinit::StaticNetwork {
            mac: s.mac.clone(),
            address: "198.18.255.200/15".into(),
            gateway: None,
            dns: vec![],
        }),
        write_files: vec![],
        runcmd: vec![],
        delivery: Default::default(),
        seed_secrets: Default::default(),
    }
}

/// Through corral: a second node, `bench-tcg`, on qemu:///system and `bridge`.
async fn start_tcg_node(
    api: &Api,
    env: &[(&str, String)],
    tmp: &Path,
    procs: &mut Procs,
    bridge: &str,
) -> Result<(), BenchError> {
    let mut env2: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| {
            !matches!(
                *k,
                "CORRAL_HYPERVISOR_URI" | "CORRAL_NODE_ID" | "CORRAL_STORAGE_DIR"
            )
        })
        .cloned()
        .collect();
    env2.push(("CORRAL_HYPERVISOR_URI", "qemu:///system".into()));
    env2.push(("CORRAL_NODE_ID", "bench-tcg".into()));
    env2.push((
        "CORRAL_STORAGE_DIR",
        tmp.join("tcg-images").display().to_string(),
    ));
    env2.push(("CORRAL_DOMAIN_TYPE", "qemu".into()));
    env2.push(("CORRAL_VM_NETWORK_BRIDGE", bridge.into()));
    let env2 = api.enrolled_env(&env2, "bench-tcg").await?;
    procs
        .children
        .push(corral(&["agent"], &env2, &tmp.join("node-tcg.log"))?);
    for _ in 0..100 {
        if api.node_online("bench-tcg").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// TCG guests created through the API on `bench-tcg` from `fixture`, one at a time,
/// timed to running and to their agent, and printed next to the `direct` times (medians,
/// spreads, and the ratio of the medians); all but the last are deleted again. The last
/// guest's name.
async fn api_guests(api: &Api, fixture: &Path, direct: &[Direct]) -> Result<String, BenchError> {
    resources_api::template_create(
        api.c(),
        CreateTemplate::new("gi".into(), OsType::Linux, fixture.display().to_string()),
    )
    .await?;
    let mut samples = Vec::with_capacity(TCG_SAMPLES);
    let mut name = String::new();
    for i in 0..TCG_SAMPLES {
        if i > 0 {
            let d = guests_api::guest_delete(api.c(), &name).await?;
            api.wait(&d.operation_id).await?;
        }
        name = format!("tcg-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        samples.push(api_guest(api, &name).await?);
    }
    let direct_running: Vec<Duration> = direct.iter().map(|d| d.running).collect();
    let direct_agent: Vec<Duration> = direct.iter().map(|d| d.agent).collect();
    let api_running: Vec<Duration> = samples.iter().map(|d| d.running).collect();
    let api_agent: Vec<Duration> = samples.iter().map(|d| d.agent).collect();
    print_tcg("API -> running", &api_running, &direct_running);
    print_tcg("API -> guest agent ready", &api_agent, &direct_agent);
    Ok(name)
}

/// One guest through the API, timed to running and to its agent.
async fn api_guest(api: &Api, name: &str) -> Result<Direct, BenchError> {
    let t0 = Instant::now();
    let ops = api
        .create(
            json!({"name": name, "template": "gi", "cpus": 1, "memory_mib": 128,
                       "max_cpus": 2, "max_memory_mib": 256, "node": "bench-tcg"}),
        )
        .await?;
    let op = ops
        .first()
        .ok_or_else(|| BenchError::Setup("no operation".into()))?;
    let v = api.wait(op).await?;
    if v["state"] != "succeeded" {
        return Err(BenchError::Setup(format!("tcg create failed: {v}")));
    }
    let running = t0.elapsed();
    let agent = running + agent_ready(name, Duration::from_secs(180)).await?;
    Ok(Direct { running, agent })
}

/// The median and spread of `xs`, seconds.
fn median_spread(xs: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = xs.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.last()) {
        (Some(lo), Some(hi)) => (s[s.len() / 2], *lo, *hi),
        _ => (0.0, 0.0, 0.0),
    }
}

/// One TCG figure: through the API against by hand, medians with their spreads.
fn print_tcg(what: &str, api: &[Duration], direct: &[Duration]) {
    let (a, a_lo, a_hi) = median_spread(api);
    let (d, d_lo, d_hi) = median_spread(direct);
    println!(
        "{:<38} {a:>10.3} s ({a_lo:.3}-{a_hi:.3})   direct {d:.3} s ({d_lo:.3}-{d_hi:.3})   \
         ratio of medians {:.2} (median of {})",
        format!("{what} (TCG guest):"),
        a / d.max(f64::EPSILON),
        api.len()
    );
}

/// Live attach: a data disk hot-plugged through the API into guest `name`, to the
/// operation's end and to the moment the guest sees the device; the guest's id.
async fn live_attach(api: &Api, name: &str) -> Result<String, BenchError> {
    let created = guests_api::disk_create(api.c(), {
        let mut d = CreateDisk::new("bench-live".into(), 1);
        d.node = Some("bench-tcg".into());
        d
    })
    .await?;
    api.wait(&created.operation_id).await?;
    let t0 = Instant::now();
    let attach =
        guests_api::disk_attach(api.c(), "bench-live", AttachDisk::new(name.to_string())).await?;
    let v = api.wait(&attach.operation_id).await?;
    if v["state"] != "succeeded" {
        return Err(BenchError::Setup(format!("live attach failed: {v}")));
    }
    let to_op = t0.elapsed();
    let seen = guest_until(name, "test -e /sys/block/vdc", Duration::from_secs(60)).await?;
    println!(
        "live attach (1 TCG guest):             {:>10.3} s   operation {:.3} s, seen in the guest {:.3} s",
        (to_op + seen).as_secs_f64(),
        to_op.as_secs_f64(),
        (to_op + seen).as_secs_f64()
    );
    Ok(v["guest_id"].as_str().unwrap_or_default().to_string())
}

/// Live resize: the balloon let out, to the operation's end and to the guest seeing
/// the memory. (vCPUs change live only on KVM: under TCG, QEMU aborts a guest that
/// gets a vCPU plugged once its translation regions are used up.)
async fn live_resize(api: &Api, name: &str, gid: &str) -> Result<(), BenchError> {
    let t0 = Instant::now();
    let size = corral_client::models::GuestSize {
        cpus: None,
        memory_mib: Some(240),
        max_cpus: None,
        max_memory_mib: None,
    };
    let resized = guests_api::guest_resize(api.c(), gid, size).await?;
    let r = api.wait(&resized.operation_id).await?;
    if r["state"] != "succeeded" {
        return Err(BenchError::Setup(format!("live resize failed: {r}")));
    }
    let to_op = t0.elapsed();
    let cond = "[ $(awk '/MemTotal/ {print $2}' /proc/meminfo) -gt 204800 ]";
    let seen = to_op + guest_until(name, cond, Duration::from_secs(60)).await?;
    println!(
        "live memory 128->240 MiB (balloon):    {:>10.3} s   operation {:.3} s, seen in the guest {:.3} s",
        seen.as_secs_f64(),
        to_op.as_secs_f64(),
        seen.as_secs_f64()
    );
    Ok(())
}

/// Event latency: virsh suspend/resume of guest `name` (id `gid`) behind corral's back,
/// `events_n` times, timed to the SSE event.
async fn event_latency(
    api: &Api,
    name: &str,
    gid: &str,
    events_n: usize,
) -> Result<(), BenchError> {
    let mut events = api.s.events(None);
    // From virsh's return (the event already happened) and from before virsh ran (an upper
    // bound that includes virsh's own start-up and the action itself).
    let mut lat = Vec::new();
    let mut lat_cmd = Vec::new();
    for i in 0..events_n {
        let (cmd, want) = if i % 2 == 0 {
            ("suspend", "paused")
        } else {
            ("resume", "running")
        };
        let before = Instant::now();
        sh("virsh", &["-c", "qemu:///system", cmd, name]).await?;
        let t = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, events.next()).await {
            let data = ev.data.unwrap_or_default();
            if ev.kind == "guest.state" && data["guest_id"] == gid && data["state"] == want {
                let now = Instant::now();
                lat.push((now - t).as_secs_f64() * 1000.0);
                lat_cmd.push((now - before).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    lat_cmd.sort_by(|a, b| a.total_cmp(b));
    println!(
        "libvirt event -> SSE client latency:   p50 {:>7.1} ms   p99 {:.1} ms   after virsh returned ({} of {} seen)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len(),
        events_n
    );
    println!(
        "virsh suspend/resume -> SSE client:    p50 {:>7.1} ms   p99 {:.1} ms   from before virsh ran",
        percentile(&lat_cmd, 0.5),
        percentile(&lat_cmd, 0.99),
    );
    Ok(())
}
