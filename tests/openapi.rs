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
fn every_operation_has_an_operation_id_and_auth_except_login_recovery_and_health() {
    let spec: serde_json::Value =
        serde_json::from_str(&corral::controller::api::spec_json()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op.get("operationId").is_some(),
                "{method} {path} has no operationId"
            );
            // Password recovery is for someone who cannot log in.
            let public = matches!(
                path.as_str(),
                "/auth/login" | "/auth/recover" | "/auth/reset" | "/health"
            );
            assert_eq!(
                op.get("security").is_none(),
                public,
                "{method} {path}: authentication"
            );
        }
    }
}

/// A JSON object with the same key twice is legal to write and silently lossy to read:
/// standard parsers keep the last one, so a path declared by two API groups lost its
/// other methods in every generated SDK. The spec must have no repeated key anywhere.
#[test]
fn no_key_appears_twice_in_any_object_of_the_spec() {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Unique;
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(UniqueVisitor)
        }
    }
    struct UniqueVisitor;
    impl<'de> Visitor<'de> for UniqueVisitor {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
            while a.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = a.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(A::Error::custom(format!("key {key:?} appears twice")));
                }
                a.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }

    let spec = corral::controller::api::spec_json();
    if let Err(e) = serde_json::from_str::<Unique>(&spec) {
        panic!("the OpenAPI document repeats a key: {e}");
    }
}
