#![allow(clippy::unwrap_used)]
//! The committed OpenAPI document must match the code. Regenerate with
//! `CORRAL_BLESS=1 cargo test --test openapi` (or `corral openapi > openapi/corral.json`).

#[test]
fn committed_spec_matches_the_code() {
    let live = corral::controller::api::spec_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/corral.json");
    if std::env::var_os("CORRAL_BLESS").is_some() {
        std::fs::write(path, format!("{live}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(path).expect("openapi/corral.json is missing");
    assert!(
        committed.trim_end() == live.trim_end(),
        "openapi/corral.json differs from the code: run `CORRAL_BLESS=1 cargo test --test openapi` and commit it"
    );
}

#[test]
fn every_operation_has_an_operation_id_and_auth_except_login_and_health() {
    let spec: serde_json::Value =
        serde_json::from_str(&corral::controller::api::spec_json()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op.get("operationId").is_some(),
                "{method} {path} has no operationId"
            );
            let public = path == "/auth/login" || path == "/health";
            assert_eq!(
                op.get("security").is_none(),
                public,
                "{method} {path}: authentication"
            );
        }
    }
}
