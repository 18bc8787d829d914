//! `corral bench --reads`: the list endpoints under 64 keep-alive connections, on an empty
//! cloud and again with N records of each kind, next to `GET /about` measured in the same
//! run (the ratio is the figure that travels between machines).
//!
//! The controller runs in this process on a tokio runtime of its own, as `corral up` runs
//! it. The records (guests with their two disks, a finished `guest.create` operation each,
//! and an address leased from one pool each) are written straight through the store in a
//! few large transactions: seconds, not the minutes real creates would take.
//!
//! The load generator is a minimal HTTP/1.1 client, one request in flight per connection
//! as `wrk` does, so the figures measure the server rather than a client library.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::{percentile, setup, BenchError};
use corral::config::ControllerConfig;
use corral::controller::alloc;
use corral::controller::store::{self as st, GuestRow, OpRow, Store};
use corral::model::{new_id, now_ms};

/// Concurrent keep-alive connections, as in the figures of the issue (`wrk -c 64`).
const CONNECTIONS: usize = 64;

/// Untimed lead-in of every measurement: connections open, caches warm.
const WARMUP: Duration = Duration::from_millis(500);

/// Rows written per transaction while seeding.
const SEED_BATCH: usize = 2000;

pub struct ReadOpts {
    /// Records of each kind for the loaded run.
    pub records: usize,
    /// Timed seconds per endpoint and run.
    pub secs: f64,
}

/// One endpoint's figures.
#[derive(Debug, Clone, Copy)]
struct Figure {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// The controller running in this process, on its own runtime thread.
/// A controller in this process, on its own database and Redis.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) token: String,
    /// The controller's template image directory.
    pub(super) templates: PathBuf,
    pub(super) store: Store,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Starts it in `dir`; template images go to `dir/templates`.
    pub(super) async fn start(dir: &Path, redis_url: &str) -> Result<Server, BenchError> {
        std::fs::create_dir_all(dir.join("templates"))?;
        let cfg = ControllerConfig {
            image_dirs: vec![dir.join("templates")],
            database: dir.join("corral.db"),
            redis_url: redis_url.to_string(),
            data_dir: dir.to_path_buf(),
            admin_password: Some("bench-admin".into()),
            plugins_dir: dir.join("plugins"),
            ..Default::default()
        };
        let (started, running) = oneshot::channel();
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("bench-controller".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return eprintln!("bench controller runtime: {e}"),
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => return eprintln!("bench controller listener: {e}"),
                    };
                    if let Err(e) =
                        corral::controller::run(cfg, listener, stopped, Some(started)).await
                    {
                        eprintln!("bench controller: {e}");
                    }
                });
            })?;
        let running = running
            .await
            .map_err(|_| BenchError::Setup("the in-process controller did not start".into()))?;
        Ok(Server {
            addr: running.addr,
            token: running.admin_token,
            templates: dir.join("templates"),
            store: running.store,
            stop,
            thread,
        })
    }

    pub(super) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }

    pub(super) async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), BenchError> {
        let mut r = http
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

/// Reads one response (Content-Length framed: every corral answer is) and returns its status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, BenchError> {
    buf.clear();
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(BenchError::Setup("the server closed the connection".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(BenchError::Setup(format!("bad HTTP response: {e}"))),
        };
        let status = resp.code.unwrap_or(0);
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| BenchError::Setup("a response without Content-Length".into()))?;
        while buf.len() < head + len {
            buf.reserve(head + len - buf.len());
            if s.read_buf(buf).await? == 0 {
                return Err(BenchError::Setup("the server closed the connection".into()));
            }
        }
        return Ok(status);
    }
}

/// One keep-alive connection sending `req` until `end`; latencies (µs) of the requests
/// sent after `timed`, and how many of them did not answer 200.
async fn connection(
    addr: SocketAddr,
    req: Arc<Vec<u8>>,
    timed: Instant,
    end: Instant,
) -> Result<(Vec<u64>, usize), BenchError> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let (mut lat, mut errors) = (Vec::new(), 0);
    loop {
        let t = Instant::now();
        if t >= end {
            return Ok((lat, errors));
        }
        s.write_all(&req).await?;
        let status = read_response(&mut s, &mut buf).await?;
        if t >= timed {
            lat.push(t.elapsed().as_micros() as u64);
            errors += usize::from(status != 200);
        }
    }
}

/// `GET path` from [`CONNECTIONS`] connections for `secs` (after the warm-up).
async fn measure(server: &Server, path: &str, secs: f64) -> Result<Figure, BenchError> {
    let req = Arc::new(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            server.addr, server.token
        )
        .into_bytes(),
    );
    let timed = Instant::now() + WARMUP;
    let end = timed + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(connection(server.addr, req.clone(), timed, end)))
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await.map_err(setup("load connection"))??;
        all.extend(lat.into_iter().map(|us| us as f64 / 1000.0));
        errors += e;
    }
    let elapsed = Instant::now().duration_since(timed).as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Ok(Figure {
        rate: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        errors,
    })
}

/// The steps of a finished `guest.create`, as the operation row holds them: the kind's own
/// step list from the catalog, each done.
fn finished_steps(def: &corral::jobs::KindDef, at: i64) -> Result<String, BenchError> {
    let mut steps = corral::controller::saga::new_steps(def);
    for s in &mut steps {
        s.state = corral::model::StepState::Done;
        s.attempt = 1;
        s.tries = 1;
        s.started_at = Some(at);
        s.finished_at = Some(at + 5);
    }
    serde_json::to_string(&steps).map_err(setup("the operation steps"))
}

/// Writes `n` guests (two disks each), one finished operation per guest and one address
/// leased from `pool` per guest, starting at `first_ip`.
async fn seed(
    store: &Store,
    n: usize,
    pool: &str,
    template: (&str, &str),
    first_ip: Ipv4Addr,
) -> Result<(), BenchError> {
    let base = now_ms() - n as i64;
    let catalog = corral::jobs::Catalog::builtin().map_err(setup("the operation catalog"))?;
    let create = catalog.get(corral::controller::saga::kinds::OpKind::GuestCreate);
    let mut done = 0;
    while done < n {
        let mut tx = store.begin().await.map_err(setup("seeding"))?;
        for i in done..(done + SEED_BATCH).min(n) {
            // Guests made by one batched create share a timestamp; the name breaks the tie.
            let at = base + (i / 100) as i64 * 100;
            let steps = finished_steps(create, at)?;
            let ip = Ipv4Addr::from(u32::from(first_ip) + i as u32);
            seed_guest(&mut tx, i, at, steps, pool, template, ip).await?;
        }
        store.commit(tx).await.map_err(setup("seeding"))?;
        done = (done + SEED_BATCH).min(n);
    }
    Ok(())
}

/// Writes guest number `i`, made at `at` from `template` (id, image path): its record on
/// `bench-node` with address `ip` leased from `pool`, its two disks and its finished
/// `guest.create` operation (with `steps`).
async fn seed_guest(
    tx: &mut st::Tx<'_>,
    i: usize,
    at: i64,
    steps: String,
    pool: &str,
    template: (&str, &str),
    ip: Ipv4Addr,
) -> Result<(), BenchError> {
    let (template, image) = template;
    let id = new_id();
    let name = format!("r{i:06}");
    st::insert_guest(tx, &guest_row(&id, &name, pool, template, image, at))
        .await
        .map_err(setup("seeding guests"))?;
    // The store's insert, as alloc::lease_ip does it (that one is the library's own).
    let leased = st::leases::insert_ip(tx, &ip.to_string(), pool, &id)
        .await
        .map_err(setup("seeding leases"))?;
    if !leased {
        return Err(setup("seeding leases")(format!("{ip} is in use")));
    }
    st::set_guest_node(tx, &id, Some("bench-node"))
        .await
        .map_err(setup("seeding guests"))?;
    let (ip, mac) = (ip.to_string(), alloc::random_mac());
    let a = st::Allocation {
        pool_id: Some(pool),
        ip: Some(&ip),
        vnc_port: 5900 + (i % 1000) as u16,
        mac: &mac,
    };
    st::set_guest_allocation(tx, &id, &a)
        .await
        .map_err(setup("seeding guests"))?;
    for kind in ["system", "seed"] {
        st::insert_disk(
            tx,
            &st::DiskRow {
                id: new_id(),
                guest_id: Some(id.clone()),
                node_id: "bench-node".into(),
                path: format!("/var/lib/corral/images/{id}-{kind}"),
                kind: kind.into(),
                backing: (kind == "system").then(|| image.into()),
                created_at: at,
            },
        )
        .await
        .map_err(setup("seeding disks"))?;
    }
    let payload = json!({"name": name, "template": template, "cpus": 1, "memory_mib": 512,
                         "pool": pool, "hostname": name, "ssh_keys": []});
    st::insert_op(tx, &create_op_row(id, payload, steps, at))
        .await
        .map_err(setup("seeding operations"))?;
    Ok(())
}

/// A running guest `id` named `name` as a create from `template` (its `image`) in `pool`
/// leaves it at `at`, before its node, address, MAC and VNC port are set.
pub(super) fn guest_row(
    id: &str,
    name: &str,
    pool: &str,
    template: &str,
    image: &str,
    at: i64,
) -> GuestRow {
    GuestRow {
        pool_id: Some(pool.to_string()),
        os_init_profile: Some("linux-default".into()),
        ..GuestRow::seeded(id, name, template, image, at)
    }
}

/// The `guest.create` operation of guest `guest`, requested at `at` with `payload` and
/// succeeded a minute later with every one of `steps` done.
fn create_op_row(guest: String, payload: Value, steps: String, at: i64) -> OpRow {
    OpRow {
        id: new_id(),
        kind: "guest.create".into(),
        guest_id: Some(guest),
        node_id: Some("bench-node".into()),
        state: corral::model::OpState::Succeeded,
        requested_by_id: None,
        steps,
        cursor: 11,
        payload: payload.to_string(),
        stage: "done".into(),
        percent: 100,
        message: String::new(),
        error: None,
        cancel_requested: false,
        inflight_node: None,
        requested_by: "admin".into(),
        created_at: at,
        started_at: Some(at),
        updated_at: at + 60,
        finished_at: Some(at + 60),
        abandon_reason: None,
    }
}

/// The endpoints measured in each run, `/about` first (the reference).
fn endpoints(pool: &str) -> Vec<(String, String)> {
    [
        ("GET /about", "/api/v1/about".to_string()),
        ("GET /guests?limit=1", "/api/v1/guests?limit=1".into()),
        ("GET /guests?limit=100", "/api/v1/guests?limit=100".into()),
        (
            "GET /operations?limit=100",
            "/api/v1/operations?limit=100".into(),
        ),
        (
            "GET /ip-pools/{id}/addresses?limit=100",
            format!("/api/v1/ip-pools/{pool}/addresses?limit=100"),
        ),
        ("GET /healthz", "/healthz".into()),
    ]
    .into_iter()
    .map(|(label, path)| (label.to_string(), path))
    .collect()
}

async fn run_all(server: &Server, pool: &str, secs: f64) -> Result<Vec<Figure>, BenchError> {
    let mut out = Vec::new();
    for (_, path) in endpoints(pool) {
        out.push(measure(server, &path, secs).await?);
    }
    Ok(out)
}

/// Checks that the loaded lists answer full pages before timing them.
async fn check_pages(server: &Server, pool: &str, records: usize) -> Result<(), BenchError> {
    let http = reqwest::Client::new();
    let want = records.min(100);
    for path in [
        "/api/v1/guests?limit=100".to_string(),
        "/api/v1/operations?limit=100".into(),
        format!("/api/v1/ip-pools/{pool}/addresses?limit=100&state=allocated"),
    ] {
        let (status, v) = server
            .call(&http, reqwest::Method::GET, &path, None)
            .await?;
        let got = v.as_array().map_or(0, Vec::len);
        if status != 200 || got != want {
            return Err(BenchError::Setup(format!(
                "{path}: {status}, {got} entries where {want} were expected"
            )));
        }
    }
    Ok(())
}

pub async fn run(o: &ReadOpts, tmp: &Path) -> Result<(), BenchError> {
    let dir = tmp.join("reads");
    std::fs::create_dir_all(&dir)?;
    let (redis_url, _redis) = super::private_redis(super::free_port()?, &dir).await?;
    let server = Server::start(&dir, &redis_url).await?;
    let result = run_on(&server, o).await;
    server.shutdown().await;
    result
}

async fn run_on(server: &Server, o: &ReadOpts) -> Result<(), BenchError> {
    let (template, image, pool) = register(server).await?;
    let records = o.records.min(131_000);

    let empty = run_all(server, &pool, o.secs).await?;
    let t0 = Instant::now();
    seed(
        &server.store,
        records,
        &pool,
        (&template, &image),
        Ipv4Addr::new(198, 18, 0, 10),
    )
    .await?;
    let seeded = t0.elapsed().as_secs_f64();
    check_pages(server, &pool, records).await?;
    let loaded = run_all(server, &pool, o.secs).await?;

    println!(
        "reads: {CONNECTIONS} keep-alive connections, {:.0} s per endpoint; {records} guests, \
         operations and leased addresses written in {seeded:.1} s",
        o.secs
    );
    print_table(&pool, records, &empty, &loaded);
    Ok(())
}

/// Registers a blank template image and a /15 pool; the template's id, its image path
/// and the pool's id.
pub(super) async fn register(server: &Server) -> Result<(String, String, String), BenchError> {
    let http = reqwest::Client::new();
    let image = server.templates.join("bench.qcow2");
    super::blank_qcow2(&image).await?;
    let image = image.display().to_string();
    let (status, tmpl) = server
        .call(
            &http,
            reqwest::Method::POST,
            "/api/v1/templates",
            Some(json!({"name": "bench", "path": image, "os_type": "linux"})),
        )
        .await?;
    if status != 201 {
        return Err(BenchError::Setup(format!(
            "registering the template: {status} {tmpl}"
        )));
    }
    // A /15 holds 131,000 addresses: room for any record count the bench is given.
    let (status, pool) = server
        .call(
            &http,
            reqwest::Method::POST,
            "/api/v1/ip-pools",
            Some(
                // The benchmarking range (RFC 2544), never a network someone uses.
                json!({"name": "bench", "cidr": "198.18.0.0/15", "range_start": "198.18.0.10",
                        "range_end": "198.19.255.250", "gateway": "198.18.0.1"}),
            ),
        )
        .await?;
    let (Some(template), Some(pool_id)) = (tmpl["id"].as_str(), pool["id"].as_str()) else {
        return Err(BenchError::Setup(format!(
            "creating the pool: {status} {pool}"
        )));
    };
    Ok((template.to_string(), image, pool_id.to_string()))
}

/// The figures of both runs side by side, each rate also as a ratio to `/about`'s.
fn print_table(pool: &str, records: usize, empty: &[Figure], loaded: &[Figure]) {
    println!(
        "  {:<40} {:>28}  {:>28}",
        "",
        "empty cloud",
        format!("{records} records")
    );
    println!(
        "  {:<40} {:>7} {:>6} {:>6} {:>6}  {:>7} {:>6} {:>6} {:>6}",
        "endpoint (p50, p99 in ms)",
        "req/s",
        "p50",
        "p99",
        "/about",
        "req/s",
        "p50",
        "p99",
        "/about"
    );
    for (i, (label, _)) in endpoints(pool).iter().enumerate() {
        let (e, l) = (empty[i], loaded[i]);
        println!(
            "  {label:<40} {:>7.0} {:>6.1} {:>6.1} {:>5.2}x  {:>7.0} {:>6.1} {:>6.1} {:>5.2}x{}",
            e.rate,
            e.p50_ms,
            e.p99_ms,
            e.rate / empty[0].rate,
            l.rate,
            l.p50_ms,
            l.p99_ms,
            l.rate / loaded[0].rate,
            if e.errors + l.errors > 0 {
                format!("  ({} not 200)", e.errors + l.errors)
            } else {
                String::new()
            }
        );
    }
    println!(
        "  GET /guests?limit=1 with {records} guests vs none: {:.2}x the rate",
        loaded[1].rate / empty[1].rate
    );
}
