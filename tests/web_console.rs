//! The web console in a real Chromium (WebDriver), against a real corral on the test
//! driver: the server's side of the session (cookie flags, CSRF, CSP), logging in, the
//! create form's validation, reserving a pool address, another user's guest, values that
//! look like markup rendered as text, a phone-sized window, and a screenshot of every main
//! page into `target/console-screenshots/` (or `CORRAL_SCREENSHOTS`). The real guest's
//! flows (create with progress, the VNC console, shut down) are in `web_console_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::Cloud;
use serde_json::{json, Value};

const XSS: &str = "<img src=x onerror=alert(1)>";

/// The controller's root URL (the console is at `/`).
fn root(cloud: &Cloud) -> String {
    cloud.url("").trim_end_matches("/api/v1").to_string()
}

/// Logs in through the login page as `user` (which offers recovery: mail is set up by then).
async fn log_in(b: &Browser, cloud: &Cloud, user: &str, password: &str) {
    b.clear_cookies().await;
    b.goto(&format!("{}/?as={user}#/login", root(cloud))).await;
    b.wait("#recover-form", 15).await;
    b.fill("#login-username", user).await;
    b.fill("#login-password", password).await;
    b.click("#login-submit").await;
    b.wait("#logout", 15).await;
}

/// Opens `hash` in the running page (no reload) and waits for `css`.
async fn open(b: &Browser, hash: &str, css: &str) {
    b.exec("location.hash = arguments[0];", json!([hash])).await;
    b.wait(css, 15).await;
}

/// Whether the page has run an injected handler or holds an `img` from a value.
async fn injected(b: &Browser) -> bool {
    b.exec(
        "return window.__xss === 1 || document.querySelectorAll('img[src=\"x\"]').length > 0;",
        json!([]),
    )
    .await
    .as_bool()
    .unwrap()
}

/// What a keyboard or screen-reader user could not use on the current page: a button
/// without a name, a form control without a label, a click target that takes no focus.
async fn unreachable(b: &Browser) -> Vec<String> {
    let v = b
        .exec(
            "const bad = [];
             for (const el of document.querySelectorAll('button')) {
               if (!(el.textContent.trim() || el.getAttribute('aria-label'))) bad.push('button ' + el.outerHTML.slice(0, 80));
             }
             for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
               const named = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                 || (el.id && document.querySelector('label[for=\"' + el.id + '\"]')) || el.closest('label');
               if (!named) bad.push('control ' + el.outerHTML.slice(0, 80));
             }
             for (const el of document.querySelectorAll('[onclick], div[role=button]:not([tabindex])')) bad.push('click ' + el.outerHTML.slice(0, 80));
             return bad;",
            json!([]),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// The session's server side, over plain HTTP: cookie flags, CSRF on writes, logout.
async fn session_rules(cloud: &Cloud) {
    let http = reqwest::Client::new();
    let base = root(cloud);
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "CSP: {csp}"
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && html.contains("/assets/app.js"),
        "{html}"
    );
    let js = http
        .get(format!("{base}/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.text().await.unwrap().len() > 10_000,
        "the bundle is empty"
    );
    assert_eq!(
        http.get(format!("{base}/assets/nope.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let login = |pw: &str| {
        http.post(format!("{base}/console/session"))
            .json(&json!({"username": "admin", "password": pw}))
            .send()
    };
    let wrong = login("nope").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert_eq!(wrong.json::<Value>().await.unwrap()["code"], "unauthorized");
    let ok = login("test-admin-pw").await.unwrap();
    assert_eq!(ok.status(), 200);
    let set = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let body: Value = ok.json().await.unwrap();
    let csrf = body["csrf"].as_str().unwrap().to_string();
    assert!(
        body.get("token").is_none(),
        "the token stays in the cookie: {body}"
    );

    let tokens = |c: &str| {
        http.get(format!("{base}/api/v1/tokens"))
            .header("cookie", c.to_string())
            .send()
    };
    let before = tokens(&cookie)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let write = |csrf: Option<&str>| {
        let mut r = http
            .post(format!("{base}/api/v1/tokens"))
            .header("cookie", cookie.clone())
            .json(&json!({"name": "from-a-cookie"}));
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c.to_string());
        }
        r.send()
    };
    // A forged write (no CSRF token, or another's) changes nothing.
    let forged = write(None).await.unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("X-CSRF-Token"));
    assert_eq!(write(Some(&"0".repeat(64))).await.unwrap().status(), 403);
    let after = tokens(&cookie)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(before, after, "a refused write changed the tokens");
    assert_eq!(write(Some(&csrf)).await.unwrap().status(), 201);

    let me = http
        .get(format!("{base}/console/session"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(me.json::<Value>().await.unwrap()["csrf"], csrf.as_str());
    let out = http
        .delete(format!("{base}/console/session"))
        .header("cookie", cookie.clone())
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(tokens(&cookie).await.unwrap().status(), 401, "logged out");

    // The console's logins (failed and not) and logouts are in the audit trail.
    let trail = cloud.get("/audit?limit=50").await.1.to_string();
    for needle in ["console_login", "console_logout", "/console/session"] {
        assert!(
            trail.contains(needle),
            "no {needle} in the audit trail: {trail}"
        );
    }

    // A user's session has a user's rights: no administration through the cookie.
    let _ = cloud.new_user("cookieuser").await;
    let ok = http
        .post(format!("{base}/console/session"))
        .json(&json!({"username": "cookieuser", "password": "cookieuser-password-1"}))
        .send()
        .await
        .unwrap();
    let set = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = ok.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let made = http
        .post(format!("{base}/api/v1/users"))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .json(&json!({"name": "sneaky", "password": "sneaky-password-1", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        made.status(),
        403,
        "a user made a user through the console session"
    );
}

/// Writes `n` running guests of the admin straight into the store (seconds, where real
/// creates would take minutes), for the list's first paint.
async fn seed_guests(cloud: &Cloud, n: usize, template: &Value) {
    use corral::controller::store::{self as st, GuestRow, Store};
    let store = Store::open(&cloud.dir().join("corral.db")).await.unwrap();
    let at = corral::model::now_ms();
    let mut tx = store.begin().await.unwrap();
    let tid = template["id"].as_str().unwrap();
    for i in 0..n {
        let name = format!("bulk{i:04}");
        st::insert_guest(
            &mut tx,
            &GuestRow {
                memory_mib: 128,
                ..GuestRow::seeded(&corral::model::new_id(), &name, tid, "/nonexistent", at)
            },
        )
        .await
        .unwrap();
    }
    store.commit(tx).await.unwrap();
}

/// First paint of the guests list with `n` guests (a fresh page load until the rows are
/// on screen), next to `corral guest list` printing the same list.
async fn list_figures(b: &Browser, cloud: &Cloud, n: usize) {
    let list_len = cloud
        .get("/guests?limit=1000")
        .await
        .1
        .as_array()
        .map_or(0, Vec::len);
    let mut paints = Vec::new();
    for _ in 0..3 {
        b.goto(&format!("{}/?fresh={}#/guests", root(cloud), paints.len()))
            .await;
        let ms = b
            .exec_async(
                "const done = arguments[arguments.length - 1], n = arguments[0];
                 const tick = () => document.querySelectorAll('#guests-table tbody tr').length >= n
                   ? requestAnimationFrame(() => done(performance.now()))
                   : setTimeout(tick, 5);
                 tick();",
                json!([n]),
            )
            .await;
        let Some(ms) = ms.as_f64() else {
            let rows = b
                .exec(
                    "return document.querySelectorAll('#guests-table tbody tr').length;",
                    json!([]),
                )
                .await;
            let error = b
                .exec(
                    "return [location.href, document.querySelector('#error')?.textContent, performance.getEntriesByType('resource').map(e => e.name + ' ' + Math.round(e.duration))];",
                    json!([]),
                )
                .await;
            panic!("the list never showed {n} rows (the API lists {list_len}): {rows} rows, error {error:?}");
        };
        paints.push(ms);
    }
    let mut clis = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let out = std::process::Command::new(common::bin())
            .args(["guest", "list", "--url", &root(cloud)])
            .env("CORRAL_TOKEN", cloud.token())
            .output()
            .unwrap();
        clis.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().count() >= n,
            "the CLI listed {} lines",
            text.lines().count()
        );
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    common::browser::figure(&format!(
        "guests list with {n} guests: browser first paint {:.0} ms (best of {paints:.0?}), \
         `corral guest list` {:.0} ms (best of {clis:.0?}): ratio {:.2}",
        best(&paints),
        best(&clis),
        best(&paints) / best(&clis)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_does_what_the_api_allows_and_shows_values_as_text() {
    if !common::require("redis-server") || !common::require("virsh") {
        return;
    }
    let Some(b) = Browser::start().await else {
        return;
    };
    let cloud = Cloud::up().await;
    session_rules(&cloud).await;
    let tpl = cloud.template("tiny").await;
    let pool = cloud.pool("webpool", "192.0.2.10", "192.0.2.20").await;
    let (gid, op) = cloud
        .create(json!({"name": "webg1", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");

    // 1. Log in: a wrong password shows the API's message; the password field hides.
    b.clear_cookies().await;
    b.goto(&format!("{}/#/guests", root(&cloud))).await;
    b.wait("#login-username", 15).await;
    // No mail set up: no recovery offered (it could not send the link).
    assert!(
        b.find("#recover-form").await.is_none(),
        "recovery offered without mail"
    );
    assert_eq!(b.prop("#login-password", "type").await, "password");
    b.click("#login-show").await;
    assert_eq!(b.prop("#login-password", "type").await, "text");
    b.click("#login-show").await;
    assert_eq!(b.prop("#login-password", "type").await, "password");
    b.screenshot("login").await;
    b.fill("#login-username", "admin").await;
    b.fill("#login-password", "wrong-password").await;
    b.click("#login-submit").await;
    let err = b
        .wait_text("#login-error", 10, |t| !t.trim().is_empty())
        .await;
    assert!(
        err.to_lowercase().contains("password") || err.contains("token"),
        "{err}"
    );
    b.fill("#login-password", "test-admin-pw").await;
    b.click("#login-submit").await;
    b.wait("#logout", 15).await;
    b.exec("window.alert = () => { window.__xss = 1; };", json!([]))
        .await;

    // The pages, each with its screenshot.
    open(&b, "#/", "#logout").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    b.screenshot("dashboard").await;
    open(&b, "#/guests", &format!("tr[data-guest-id=\"{gid}\"]")).await;
    b.wait_text(&format!("tr[data-guest-id=\"{gid}\"] td.state"), 10, |t| {
        t.trim() == "running"
    })
    .await;
    b.screenshot("guests").await;
    open(&b, &format!("#/guests/{gid}"), "#guest-state").await;
    b.wait_text("#guest-state", 10, |t| t.contains("running"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.screenshot("guest").await;
    open(&b, "#/nodes", "#logout").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.screenshot("nodes").await;
    open(&b, "#/admin", "#logout").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.screenshot("admin").await;

    // Every page in reach of a keyboard and a screen reader.
    for (page, ready) in [
        ("#/", "#logout"),
        ("#/guests", "#guests-table"),
        (&format!("#/guests/{gid}") as &str, "#guest-state"),
        ("#/guests/new", "#create-name"),
        ("#/pools", "#logout"),
        ("#/nodes", "#logout"),
        ("#/templates", "#logout"),
        ("#/scripts", "#logout"),
        ("#/admin", "#logout"),
    ] {
        open(&b, page, ready).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bad = unreachable(&b).await;
        assert!(bad.is_empty(), "{page}: {bad:#?}");
    }

    // 6. Validation: errors beside their fields, nothing sent; a server refusal shown.
    let count = || async { cloud.get("/guests").await.1.as_array().unwrap().len() };
    let guests_before = count().await;
    open(&b, "#/guests/new", "#create-name").await;
    b.fill("#create-name", "Bad Name!").await;
    b.fill("#create-cpus", "0").await;
    b.click("#create-submit").await;
    let name_err = b
        .wait_text(".field-error[data-for=\"create-name\"]", 5, |t| {
            !t.trim().is_empty()
        })
        .await;
    let cpu_err = b
        .wait_text(".field-error[data-for=\"create-cpus\"]", 5, |t| {
            !t.trim().is_empty()
        })
        .await;
    eprintln!("validation: name {name_err:?}, cpus {cpu_err:?}");
    b.screenshot("create").await;
    b.fill("#create-name", "webg1").await;
    b.fill("#create-cpus", "1").await;
    b.fill("#create-memory", "128").await;
    b.click("#create-submit").await;
    let refused = b
        .wait_text("#create-form", 10, |t| {
            t.contains("already") || t.contains("exists")
        })
        .await;
    assert!(!refused.is_empty());
    assert_eq!(
        count().await,
        guests_before,
        "a refused form created a guest"
    );

    // 5. Reserve an address in a pool.
    let pid = pool["id"].as_str().unwrap();
    let row = "tr[data-ip=\"192.0.2.15\"]";
    open(&b, &format!("#/pools/{pid}"), row).await;
    b.click(&format!("{row} button.reserve")).await;
    b.wait_text(&format!("{row} td.ip-state"), 10, |t| {
        t.contains("reserved")
    })
    .await;
    b.screenshot("pool").await;
    let addrs = cloud.get(&format!("/ip-pools/{pid}/addresses")).await.1;
    assert!(addrs.to_string().contains("reserved"), "{addrs}");

    // 8. A name that is markup is refused by the API; a description or a script that holds
    // markup renders as text.
    let (s, v) = cloud
        .post(
            "/guests",
            json!({"name": XSS, "template": "tiny", "cpus": 1, "memory_mib": 128}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let tid = tpl["id"].as_str().unwrap();
    let (s, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/templates/{tid}"),
            Some(json!({"description": XSS})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = cloud
        .post(
            "/boot-scripts",
            json!({"name": "xss-probe", "source": format!("// {XSS}\nfn actions(guest, params) {{ [] }}\n")}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    open(&b, "#/templates", "#upload-file").await;
    // An upload through the page: checksum and upload bars fill, the template is there.
    let image = cloud.dir().join("upload.qcow2");
    assert!(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("32M")
        .status()
        .unwrap()
        .success());
    b.fill("#upload-name", "uploaded").await;
    b.fill("#upload-file", image.to_str().unwrap()).await;
    b.click("#upload-submit").await;
    let t0 = Instant::now();
    while !cloud
        .get("/templates")
        .await
        .1
        .to_string()
        .contains("\"uploaded\"")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the upload never made a template"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = Instant::now();
    while b.prop("#upload-progress", "value").await.as_f64() != Some(100.0) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the upload bar stopped short"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_text("body", 10, |t| t.contains(XSS)).await;
    assert!(!injected(&b).await, "a template description ran as markup");
    // A PATCH changes what it names only: `null` clears the description, the profile stays.
    let profile = cloud.get(&format!("/templates/{tid}")).await.1["os_init_profile"].clone();
    let (s, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/templates/{tid}"),
            Some(json!({"description": null})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v.get("description").is_none() && v["os_init_profile"] == profile,
        "{v}"
    );
    b.screenshot("templates").await;
    open(&b, "#/scripts", "#logout").await;
    b.wait_text("body", 10, |t| t.contains("xss-probe")).await;
    // A script the sandbox refuses: the error is shown at its line, nothing is saved.
    b.click("#script-new").await;
    b.exec(
        "const s = document.querySelector('#script-kind'); s.value = 'boot';
         s.dispatchEvent(new Event('change', {bubbles: true}));",
        json!([]),
    )
    .await;
    b.fill("#script-name", "broken").await;
    b.fill(
        "#script-source",
        "// refused\nfn actions(guest, params) {\n    let x = ;\n    []\n}\n",
    )
    .await;
    b.click("#script-save").await;
    b.wait("#script-gutter span.err[data-line=\"3\"]", 10).await;
    let said = b.text("#script-error").await.unwrap();
    assert!(said.contains("line 3"), "{said}");
    let (s, _) = cloud.get("/boot-scripts/broken").await;
    assert_eq!(s, 404, "a refused script was saved");
    b.screenshot("scripts").await;
    assert!(!injected(&b).await, "a script ran as markup");

    // A phone: nothing wider than the screen but the tables' own scrolling.
    b.resize(390, 844).await;
    open(&b, "#/guests", "#guests-table").await;
    let overflow = b
        .exec(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_f64().unwrap() <= 1.0,
        "the page is wider than a phone: {overflow}"
    );
    b.screenshot("guests-phone").await;
    b.resize(1280, 900).await;
    // The dark theme, chosen by hand, is kept across a reload.
    b.click("#theme-toggle").await;
    let dark = || async {
        b.exec(
            "return getComputedStyle(document.body).backgroundColor;",
            json!([]),
        )
        .await
    };
    let chosen = dark().await;
    b.goto(&format!("{}/?reload=1#/guests", root(&cloud))).await;
    b.wait("#guests-table", 15).await;
    assert_eq!(dark().await, chosen, "the theme was not kept");
    b.screenshot("guests-dark").await;

    // With mail set up, the login page offers password recovery.
    let (s, v) = cloud
        .call(
            reqwest::Method::PATCH,
            "/settings",
            Some(
                json!({"smtp": {"host": "127.0.0.1", "port": 2525, "security": "none",
                                 "from": "corral@example.com"}}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // 7. Another user sees only their guests; the admin's guest URL is "not found".
    let _ = cloud.new_user("webuser").await;
    log_in(&b, &cloud, "webuser", "webuser-password-1").await;
    open(&b, "#/guests", "#guests-table").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.find(&format!("tr[data-guest-id=\"{gid}\"]"))
            .await
            .is_none(),
        "another user's guest is listed"
    );
    open(&b, &format!("#/guests/{gid}"), "#not-found").await;
    let nf = b.text("#not-found").await.unwrap();
    assert!(nf.to_lowercase().contains("not found"), "{nf}");
    assert!(!b.text("body").await.unwrap().contains("webg1"));

    // The figure: the list's first paint with 1,000 guests, next to the CLI.
    log_in(&b, &cloud, "admin", "test-admin-pw").await;
    seed_guests(&cloud, 1000, &tpl).await;
    // One guest created through the API tells the controller its guest table changed
    // (the seeded rows bypassed it), so the list is read afresh.
    let (_, op) = cloud
        .create(json!({"name": "after-seed", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    list_figures(&b, &cloud, 1000).await;
}
