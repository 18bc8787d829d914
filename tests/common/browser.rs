//! A real Chromium driven over WebDriver (W3C JSON over HTTP, spoken here with reqwest):
//! `chromedriver` on a free port, one headless session, and what the console tests need:
//! open a page, find, click, type, read, run a script, take a screenshot. Dropping the
//! browser ends the session and the driver.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, require};

/// The W3C key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    /// Where screenshots go (`target/console-screenshots` unless `CORRAL_SCREENSHOTS`).
    pub shots: PathBuf,
}

/// The Chromium binary (Debian names it `chromium`).
fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|b| b.to_string())
}

/// Where the console tests write their screenshots, as the README names it.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CORRAL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots"))
}

/// Prints a measured figure and keeps it in `figures.txt` beside the screenshots (a passing
/// test's output is not shown; `.ci/run` prints this file at the end).
pub fn figure(line: &str) {
    use std::io::Write;
    eprintln!("FIGURE {line}");
    let dir = screenshot_dir();
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("figures.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280×900; `None` (after a loud
    /// message) when they are not installed outside CI. In CI their absence fails.
    pub async fn start() -> Option<Browser> {
        if !require("chromedriver") {
            return None;
        }
        let Some(binary) = chromium() else {
            if std::env::var("CI").is_ok() {
                panic!("chromium is required in CI and is missing");
            }
            eprintln!("SKIPPED: chromium is not installed; this test needs it");
            return None;
        };
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": which(&binary),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--no-first-run", "--disable-extensions"],
            },
        }}});
        let v: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).unwrap();
        Some(Browser {
            driver,
            base: format!("{root}/session/{id}"),
            http,
            shots,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Forgets every cookie of the current site (a logged-out browser).
    pub async fn clear_cookies(&self) {
        self.cmd(reqwest::Method::DELETE, "/cookie", None).await;
    }

    /// Sets the window's size (a phone's, for instance).
    pub async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await;
    }

    /// The element matching `css`, if any, now.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT].as_str().map(String::from)
    }

    /// Waits (up to `secs`) for an element matching `css` and returns it.
    pub async fn wait(&self, css: &str, secs: u64) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                let body = self.text("body").await.unwrap_or_default();
                let url = self.cmd(reqwest::Method::GET, "/url", None).await;
                let logs = self.post("/se/log", json!({"type": "browser"})).await;
                panic!(
                    "no `{css}` after {secs} s at {url}; the page says:\n{body}\nconsole: {logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css` (waiting up to 10 s for it).
    pub async fn click(&self, css: &str) {
        let e = self.wait(css, 10).await;
        self.post(&format!("/element/{e}/click"), json!({})).await;
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.wait(css, 10).await;
        self.post(&format!("/element/{e}/clear"), json!({})).await;
        self.post(&format!("/element/{e}/value"), json!({ "text": text }))
            .await;
    }

    /// The visible text of the element matching `css`, if it exists.
    pub async fn text(&self, css: &str) -> Option<String> {
        let e = self.find(css).await?;
        self.cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .map(String::from)
    }

    /// A property (`value`, `type`, `checked`…) of the element matching `css`.
    pub async fn prop(&self, css: &str, name: &str) -> Value {
        let e = self.wait(css, 10).await;
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{e}/property/{name}"),
            None,
        )
        .await
    }

    /// Waits (up to `secs`) until the text of `css` passes `check`; answers it.
    pub async fn wait_text(&self, css: &str, secs: u64, check: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        let mut last = None;
        while t0.elapsed() < Duration::from_secs(secs) {
            last = self.text(css).await;
            if last.as_deref().is_some_and(&check) {
                return last.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("`{css}` never passed the check; last text {last:?}");
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and answers its value.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// Runs an async `script` whose last argument is the callback to call with the result.
    pub async fn exec_async(&self, script: &str, args: Value) -> Value {
        self.post("/execute/async", json!({"script": script, "args": args}))
            .await
    }

    /// Saves a PNG of the viewport as `<shots>/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}

fn which(bin: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for Browser {
    /// Kills the driver's process group: chromedriver and the Chromium it started.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
