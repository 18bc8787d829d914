//! Rendered list pages, kept until a table they were read from changes.
//!
//! A page of 100 guests costs a reader connection, 100 rows and their JSON; the same page
//! asked for again costs a map lookup and a reference-counted copy of its bytes. Each
//! entry carries the [`Stamp`] of the tables it was read from, taken *before* the query
//! (see `store::changes` for why that ordering makes a stale hit impossible once the
//! writer has answered), and is served only while the stamp still matches.
//!
//! A page whose content also depends on the clock (an operation's ETA) says so when it is
//! rendered and is kept for at most [`CLOCK_BOUND`].
//!
//! The key is the endpoint and its parsed, typed parameters, so two spellings of the same
//! query share an entry and unknown parameters never reach it. The map holds at most
//! [`MAX_ENTRIES`] pages of at most [`MAX_BODY`] bytes: a full map first drops what is
//! stale, then everything.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{payload::Payload, ApiResponse};

use super::error::ApiResult;
use crate::controller::store::{Changes, Stamp};

/// Pages kept at once.
const MAX_ENTRIES: usize = 1024;
/// Larger pages are rendered every time rather than kept.
const MAX_BODY: usize = 1 << 20;
/// How long a page that shows clock-derived figures is kept.
pub const CLOCK_BOUND: Duration = Duration::from_secs(1);

/// Whether a rendered page also depends on the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Only the tables' contents shape the page.
    Independent,
    /// The page shows figures computed from the current time.
    Dependent,
}

pub struct Pages {
    changes: Arc<Changes>,
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    stamp: Stamp,
    body: Bytes,
    until: Option<Instant>,
}

impl Entry {
    fn fresh(&self, stamp: Stamp, now: Instant) -> bool {
        self.stamp == stamp && self.until.is_none_or(|u| now < u)
    }
}

impl Pages {
    pub fn new(changes: Arc<Changes>) -> Self {
        Pages {
            changes,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The page under `key`, rendered by `render` unless a fresh copy is kept. `tables` are
    /// every table the render reads.
    pub async fn page<T, F>(&self, key: String, tables: &[&str], render: F) -> ApiResult<Cached<T>>
    where
        T: ToJSON,
        F: Future<Output = ApiResult<(T, Clock)>>,
    {
        let stamp = self.changes.stamp(tables);
        if let Some(body) = self.kept(&key, stamp) {
            return Ok(Cached::new(body));
        }
        let (value, clock) = render.await?;
        // The same bytes poem-openapi's `Json` would send.
        let body = Bytes::from(value.to_json().map(|v| v.to_string()).unwrap_or_default());
        if body.len() <= MAX_BODY {
            let until = (clock == Clock::Dependent).then(|| Instant::now() + CLOCK_BOUND);
            self.keep(key, stamp, body.clone(), until);
        }
        Ok(Cached::new(body))
    }

    fn kept(&self, key: &str, stamp: Stamp) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|e| e.fresh(stamp, Instant::now()))
            .map(|e| e.body.clone())
    }

    fn keep(&self, key: String, stamp: Stamp, body: Bytes, until: Option<Instant>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, e| e.until.is_none_or(|u| now < u));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, Entry { stamp, body, until });
    }
}

/// A JSON body rendered earlier: documented in the spec exactly as `Json<T>` is.
pub struct Cached<T> {
    body: Bytes,
    of: PhantomData<fn() -> T>,
}

impl<T> Cached<T> {
    fn new(body: Bytes) -> Self {
        Cached {
            body,
            of: PhantomData,
        }
    }
}

impl<T: Type> Payload for Cached<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + Send> IntoResponse for Cached<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(<Self as Payload>::CONTENT_TYPE)
            .body(self.body)
    }
}

impl<T: Type + Send> ApiResponse for Cached<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: <Self as Payload>::CONTENT_TYPE,
                    schema: <Self as Payload>::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::controller::store::Store;

    async fn names(pages: &Pages, store: &Store, renders: &AtomicUsize) -> String {
        let page = pages
            .page("users".into(), &["users"], async {
                renders.fetch_add(1, Ordering::SeqCst);
                let mut names: Vec<String> =
                    store.users().await?.into_iter().map(|u| u.name).collect();
                names.sort();
                Ok((names, Clock::Independent))
            })
            .await;
        let Ok(page) = page else {
            panic!("the page failed to render");
        };
        String::from_utf8(page.body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_page_is_rendered_again_only_after_its_table_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let pages = Pages::new(store.changes.clone());
        let renders = AtomicUsize::new(0);

        assert_eq!(names(&pages, &store, &renders).await, "[]");
        assert_eq!(names(&pages, &store, &renders).await, "[]");
        assert_eq!(
            renders.load(Ordering::SeqCst),
            1,
            "the second read was rendered"
        );

        // A change elsewhere keeps the page; a change to its table replaces it.
        store
            .insert_template(&crate::controller::store::TemplateRow {
                id: "t1".into(),
                name: "tiny".into(),
                path: "/images/tiny.qcow2".into(),
                os_type: "linux".into(),
                min_memory_mib: 64,
                created_at: 0,
                os_init_profile: None,
                owner_id: None,
                public: true,
                sha256: None,
                size_bytes: None,
                description: None,
            })
            .await
            .unwrap();
        assert_eq!(names(&pages, &store, &renders).await, "[]");
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        store
            .insert_user(&crate::controller::store::UserRow {
                id: "u1".into(),
                name: "ann".into(),
                password_hash: "x".into(),
                is_admin: false,
                created_at: 0,
                role: "user".into(),
            })
            .await
            .unwrap();
        assert_eq!(names(&pages, &store, &renders).await, r#"["ann"]"#);
        assert_eq!(renders.load(Ordering::SeqCst), 2);
    }
}
