//! Password recovery by mail (S33) with SMTP settings kept through the API (S94), against
//! a real corral and a real SMTP server (aiosmtpd writing a Maildir): the link arrives,
//! works once, revokes the old tokens; unknown names get the same answer and no mail.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, require, Cloud};
use reqwest::Method;
use serde_json::{json, Value};

/// The Python that has aiosmtpd: `CORRAL_SMTP_PYTHON` (CI installs it, see `.ci/run`) or
/// `python3` if it has the module. In CI its absence fails the test.
fn smtp_python() -> Option<String> {
    let py = std::env::var("CORRAL_SMTP_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").is_ok() {
            panic!("aiosmtpd is required in CI and {py} does not have it");
        }
        eprintln!("SKIPPED: no Python with aiosmtpd (pip install -r tests/smtp/requirements.txt)");
        return None;
    }
    Some(py)
}

struct Sink {
    child: Child,
    maildir: PathBuf,
    port: u16,
}

impl Sink {
    fn start(py: &str, dir: &Path) -> Sink {
        let port = free_port();
        let maildir = dir.join("maildir");
        let child = Command::new(py)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the SMTP sink never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        Sink {
            child,
            maildir,
            port,
        }
    }

    fn mails(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wait_mails(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.mails();
            if m.len() >= n || Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mail with quoted-printable undone (soft line breaks, `=XX`), as a mail reader shows it.
fn quoted_printable(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let mut out = String::new();
    let mut chars = joined.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '=' {
            let hex: String = chars.clone().take(2).collect();
            if let Ok(b) = u8::from_str_radix(&hex, 16) {
                out.push(b as char);
                chars.next();
                chars.next();
                continue;
            }
        }
        out.push(c);
    }
    out
}

async fn anon(cloud: &Cloud, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(cloud.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn status_with(cloud: &Cloud, token: &str, path: &str) -> u16 {
    reqwest::Client::new()
        .get(cloud.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_password_is_reset_through_a_mailed_single_use_link() {
    if !require("redis-server") {
        return;
    }
    let Some(py) = smtp_python() else {
        return;
    };
    let cloud = Cloud::split("test:///default").await;
    let sink = Sink::start(&py, cloud.dir());

    // No mail settings: recovery is off and says to ask an administrator.
    let (s, v) = anon(&cloud, "/auth/recover", json!({"username": "admin"})).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("ask an administrator"),
        "{v}"
    );

    // Settings through the API; a bad one is refused and changes nothing.
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/settings",
            Some(
                json!({"smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none",
                                 "from": "not an address"}}),
            ),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(cloud.get("/settings").await.1["smtp"]["host"], "");
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/settings",
            Some(
                json!({"smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none",
                                 "username": "relay", "password": "relay-secret",
                                 "from": "corral@example.com",
                                 "reset_url": "https://corral.example/reset?token="}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let smtp = &v["smtp"];
    assert_eq!(smtp["password_set"], true, "{v}");
    assert!(
        !v.to_string().contains("relay-secret"),
        "the password is never shown: {v}"
    );
    // Nor kept in clear: whoever copies the database finds it sealed (issue "Trust,
    // round 2", secrets at rest); the key is beside it, 0600.
    let (stored,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE key = 'smtp'")
        .fetch_one(&cloud.db().await)
        .await
        .unwrap();
    assert!(
        !stored.contains("relay-secret") && stored.contains("sealed:v1:"),
        "{stored}"
    );
    // The relay here takes no login: drop the credentials again.
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/settings",
            Some(
                json!({"smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none",
                                 "password": "", "from": "corral@example.com",
                                 "reset_url": "https://corral.example/reset?token="}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["smtp"]["password_set"], false, "{v}");

    let (s, v) = cloud
        .post(
            "/users",
            json!({"name": "ann", "password": "ann-password", "role": "user", "email": "ann@example.com"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["email"], "ann@example.com");
    let (s, v) = cloud
        .post(
            "/users",
            json!({"name": "bob", "password": "bob-password", "role": "user", "email": "bob at example"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = anon(
        &cloud,
        "/auth/login",
        json!({"username": "ann", "password": "ann-password"}),
    )
    .await;
    let old_token = v["token"].as_str().unwrap().to_string();

    // The same answer for a real account and an unknown one; one mail, to ann.
    let (s, real) = anon(&cloud, "/auth/recover", json!({"username": "ann"})).await;
    assert_eq!(s, 202, "{real}");
    let (s, unknown) = anon(&cloud, "/auth/recover", json!({"username": "nobody"})).await;
    assert_eq!(s, 202, "{unknown}");
    assert_eq!(real, unknown);
    let mails = sink.wait_mails(1);
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &quoted_printable(&mails[0]);
    assert!(mail.contains("To: ann@example.com"), "{mail}");
    assert!(mail.contains("From: corral@example.com"), "{mail}");
    let at = mail
        .find("https://corral.example/reset?token=")
        .expect("the link")
        + 35;
    let token: String = mail[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    assert!(token.starts_with("crl_") && token.len() == 68, "{token}");

    // A weak new password is refused and the link still works; then it works once.
    let (s, v) = anon(
        &cloud,
        "/auth/reset",
        json!({"token": token, "password": "short"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(status_with(&cloud, &old_token, "/users/me").await, 200);
    let (s, v) = anon(
        &cloud,
        "/auth/reset",
        json!({"token": token, "password": "ann-new-password"}),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = anon(
        &cloud,
        "/auth/reset",
        json!({"token": token, "password": "ann-other-password"}),
    )
    .await;
    assert_eq!(s, 400, "used once: {v}");
    assert!(
        v["message"].as_str().unwrap().contains("ask for a new one"),
        "{v}"
    );
    let (s, _) = anon(
        &cloud,
        "/auth/reset",
        json!({"token": "crl_forged", "password": "whatever-long"}),
    )
    .await;
    assert_eq!(s, 400);

    // The old password and every old token are gone; the new password works.
    assert_eq!(status_with(&cloud, &old_token, "/users/me").await, 401);
    let (s, _) = anon(
        &cloud,
        "/auth/login",
        json!({"username": "ann", "password": "ann-password"}),
    )
    .await;
    assert_eq!(s, 401);
    let (s, v) = anon(
        &cloud,
        "/auth/login",
        json!({"username": "ann", "password": "ann-new-password"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // The trail names who asked, from where.
    let (_, trail) = cloud.get("/audit?action=auth_recover").await;
    let users: Vec<&str> = trail
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["user"].as_str())
        .collect();
    assert!(
        users.contains(&"ann") && users.contains(&"nobody"),
        "{trail}"
    );
}
