//! The event stream (SSE): operation progress, guest states, node liveness, each with a
//! sequence number as the SSE `id`. A client that reconnects with `Last-Event-ID` (or
//! `?after=`) gets everything it missed, from the event log in SQL, then live events.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use poem::web::Data;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::EventStream;
use poem_openapi::{Object, OpenApi};

use super::error::{ApiResult, Error};
use super::{AppState, Auth};
use crate::model::rfc3339;

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct EventItem {
    /// Monotonic sequence number; also the SSE event id.
    pub seq: i64,
    pub at: String,
    /// `operation`, `guest.state`, `node.state`, `node.refused` or `template.upload`.
    pub kind: String,
    /// Id of the operation, guest or node concerned.
    pub subject: String,
    pub data: serde_json::Value,
}

pub struct EventApi;

#[OpenApi(tag = "super::system::Tag::Events")]
impl EventApi {
    /// Follow events. Resumes after `Last-Event-ID` (or `after`), replaying what was missed.
    #[oai(path = "/events", method = "get", operation_id = "event_stream")]
    async fn stream(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<String>>,
        /// Start after this sequence number (0: from the beginning). Default: only new events.
        after: Query<Option<i64>>,
    ) -> ApiResult<EventStream<BoxStream<'static, EventItem>>> {
        let start = match (last_event_id.0, after.0) {
            (Some(h), _) => h.trim().parse::<i64>().map_err(|_| {
                Error::BadRequest(format!("Last-Event-ID {h:?} is not a sequence number"))
            })?,
            (None, Some(a)) => a,
            (None, None) => state.store.last_event_seq().await?,
        };
        let store = state.store.clone();
        // A user sees the events of their own guests and requests only.
        let viewer = auth.0.owner_scope().map(str::to_string);
        let stream = futures::stream::unfold((store, start), move |(store, mut cursor)| {
            let viewer = viewer.clone();
            async move {
                let notify = store.events_appended.clone();
                loop {
                    let notified = notify.notified();
                    match store.events_after(cursor, 500).await {
                        Ok(rows) if !rows.is_empty() => {
                            cursor = rows.last().map(|r| r.seq).unwrap_or(cursor);
                            let items: Vec<EventItem> = rows
                                .into_iter()
                                .map(|r| EventItem {
                                    seq: r.seq,
                                    at: rfc3339(r.at),
                                    kind: r.kind,
                                    subject: r.subject,
                                    data: serde_json::from_str(&r.data)
                                        .unwrap_or(serde_json::Value::Null),
                                })
                                .collect();
                            let items = match &viewer {
                                None => items,
                                Some(id) => {
                                    let owned =
                                        store.guest_ids_of_owner(id).await.unwrap_or_default();
                                    items
                                        .into_iter()
                                        .filter(|e| visible(e, &owned, id))
                                        .collect()
                                }
                            };
                            if items.is_empty() {
                                continue;
                            }
                            return Some((futures::stream::iter(items), (store, cursor)));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("event stream: {e}"),
                    }
                    // Woken by local commits; the cap covers writers in other processes.
                    let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
                }
            }
        })
        .flatten()
        .boxed();
        Ok(EventStream::new(stream)
            .keep_alive(Duration::from_secs(15))
            .to_event(|item| {
                let data = serde_json::to_string(&serde_json::json!({
                    "seq": item.seq, "at": item.at, "kind": item.kind, "subject": item.subject, "data": item.data,
                }))
                .unwrap_or_default();
                poem::web::sse::Event::message(data).id(item.seq.to_string()).event_type(item.kind)
            }))
    }
}

/// Whether a user sees an event: one naming a guest they own, or a request they made
/// (by their user id: a name can belong to someone else tomorrow).
fn visible(e: &EventItem, owned: &std::collections::HashSet<String>, user_id: &str) -> bool {
    let guest = e.data["guest_id"]
        .as_str()
        .or(e.kind.starts_with("guest.").then_some(e.subject.as_str()));
    guest.is_some_and(|g| owned.contains(g)) || e.data["requested_by_id"] == user_id
}
