//! Password recovery by mail (S33) with SMTP settings kept through the API (S94), against
//! a real corral and a real SMTP server (aiosmtpd writing a Maildir): the link arrives,
//! works once, revokes the old tokens; unknown names get the same answer and no mail.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, require, sdk_error, Cloud};
use corral_client::apis::configuration::Configuration;
use corral_client::apis::{auth_api, system_api, users_api};
use corral_client::models::{
    NewUser, ResetRequest, SettingsChange, SmtpChange, SmtpSecurity, UserRole,
};
use corral_client::session::Session;
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

/// A raw request without a token, for the refusals and answers the test checks on the wire.
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

/// The SDK's configuration for a caller without a token.
fn anonymous(cloud: &Cloud) -> Configuration {
    Configuration {
        base_path: cloud.url(""),
        ..Configuration::default()
    }
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
    let c = &cloud.sdk().config;

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
    let settings = system_api::settings_get(c)
        .await
        .unwrap_or_else(|e| panic!("settings: {}", sdk_error(e)));
    assert_eq!(settings.smtp.host, "");
    // Raw: the password must appear nowhere in the answer as sent, not only in the fields
    // the SDK's model carries.
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
    let mut smtp = SmtpChange::new("127.0.0.1".into());
    smtp.port = Some(sink.port);
    smtp.security = Some(SmtpSecurity::None);
    smtp.password = Some(String::new());
    smtp.from = Some("corral@example.com".into());
    smtp.reset_url = Some("https://corral.example/reset?token=".into());
    let mut change = SettingsChange::new();
    change.smtp = Some(Box::new(smtp));
    let v = system_api::settings_update(c, change)
        .await
        .unwrap_or_else(|e| panic!("smtp settings: {}", sdk_error(e)));
    assert!(!v.smtp.password_set, "{v:?}");

    let mut new = NewUser::new("ann".into(), "ann-password".into(), UserRole::User);
    new.email = Some("ann@example.com".into());
    let v = users_api::user_create(c, new)
        .await
        .unwrap_or_else(|e| panic!("user ann: {}", sdk_error(e)));
    assert_eq!(v.email.as_deref(), Some("ann@example.com"));
    let (s, v) = cloud
        .post(
            "/users",
            json!({"name": "bob", "password": "bob-password", "role": "user", "email": "bob at example"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let old = Session::login(&cloud.url(""), "ann", "ann-password")
        .await
        .unwrap_or_else(|e| panic!("login of ann: {e}"));
    let old_token = old.config.bearer_access_token.clone().unwrap();

    // The same answer for a real account and an unknown one; one mail, to ann.
    // Raw: the two answers must be the same on the wire, status and whole body.
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
    users_api::user_me(&old.config)
        .await
        .unwrap_or_else(|e| panic!("the old token before the reset: {}", sdk_error(e)));
    auth_api::auth_reset(
        &anonymous(&cloud),
        ResetRequest::new("ann-new-password".into(), token.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("reset: {}", sdk_error(e)));
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
    assert_eq!(
        cloud
            .call_as(&old_token, Method::GET, "/users/me", None)
            .await
            .0,
        401
    );
    let (s, _) = anon(
        &cloud,
        "/auth/login",
        json!({"username": "ann", "password": "ann-password"}),
    )
    .await;
    assert_eq!(s, 401);
    Session::login(&cloud.url(""), "ann", "ann-new-password")
        .await
        .unwrap_or_else(|e| panic!("login with the new password: {e}"));

    // The trail names who asked, from where.
    let trail = system_api::audit_list(c, None, None, Some("auth_recover"), None, None, None)
        .await
        .unwrap_or_else(|e| panic!("audit: {}", sdk_error(e)));
    let users: Vec<&str> = trail.iter().filter_map(|e| e.user.as_deref()).collect();
    assert!(
        users.contains(&"ann") && users.contains(&"nobody"),
        "{trail:?}"
    );
}
