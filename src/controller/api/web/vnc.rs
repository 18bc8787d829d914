//! The console WebSocket: `GET /console/vnc?ticket=…`.
//!
//! `POST /guests/{id}/console` sets a one-time VNC password on the guest and, beside it,
//! makes a console ticket here: a random value bound to the user who asked, the guest and
//! its node's VNC address, valid as long as the password. The browser opens this
//! WebSocket with the ticket (and its session cookie, or a bearer token); the ticket is
//! spent on first use whoever presents it, and the connection is relayed only for the
//! user it was made for, while that user may still see the guest. The controller then
//! copies bytes between the WebSocket and the node's VNC port: the browser never reaches
//! a node, and the VNC password still guards the VNC session itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use poem::web::websocket::{Message, WebSocket};
use poem::web::{Data, Query};
use poem::{IntoResponse, Request, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::access;
use super::super::error::{ApiError, Error};
use super::super::AppState;
use super::session::console_caller;
use crate::model::{now_ms, random_secret};

/// Where the console WebSocket is opened.
pub const ROUTE: &str = "/console/vnc";
/// How long connecting to the node's VNC port may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// What a ticket opens.
#[derive(Debug, Clone)]
struct Ticket {
    user_id: String,
    guest_id: String,
    address: String,
    port: u16,
    expires_ms: i64,
}

/// The unspent console tickets, in memory: a controller restart spends them all (the
/// user asks for a new console, as after any expiry).
#[derive(Default)]
pub struct Tickets {
    open: Mutex<HashMap<String, Ticket>>,
}

impl Tickets {
    /// Makes a ticket for `user_id` to reach `guest_id`'s VNC server at `address:port`
    /// until `expires_ms`; answers the path to open.
    pub fn issue(
        &self,
        user_id: &str,
        guest_id: &str,
        address: &str,
        port: u16,
        expires_ms: i64,
    ) -> String {
        let value = random_secret(32);
        let now = now_ms();
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, t| t.expires_ms > now);
            open.insert(
                value.clone(),
                Ticket {
                    user_id: user_id.into(),
                    guest_id: guest_id.into(),
                    address: address.into(),
                    port,
                    expires_ms,
                },
            );
        }
        format!("{ROUTE}?ticket={value}")
    }

    /// Spends `value`: its ticket if it exists and has not expired (it is gone either way).
    fn spend(&self, value: &str) -> Option<Ticket> {
        let t = self.open.lock().ok()?.remove(value)?;
        (t.expires_ms > now_ms()).then_some(t)
    }
}

#[derive(Deserialize)]
pub struct TicketQuery {
    ticket: String,
}

fn refuse(e: Error) -> Response {
    ApiError::from(e).into_response()
}

/// `GET /console/vnc?ticket=…`: checks the caller and the ticket, connects to the node's
/// VNC port, then upgrades and relays.
#[poem::handler]
pub async fn relay(
    req: &Request,
    ws: WebSocket,
    query: Query<TicketQuery>,
    state: Data<&AppState>,
) -> Response {
    let Some(caller) = console_caller(&state.store, req).await else {
        return refuse(Error::Unauthorized);
    };
    let refused = || {
        refuse(Error::Forbidden(
            "this console ticket is spent, expired or not yours; open the console again".into(),
        ))
    };
    let Some(ticket) = state.consoles.spend(&query.ticket) else {
        return refused();
    };
    if ticket.user_id != caller.user.id {
        return refused();
    }
    // The user may have lost the guest since (deleted, or given to another owner).
    if let Err(e) = access::guest(&state, &caller, &ticket.guest_id).await {
        return refuse(e);
    }
    let target = format!("{}:{}", ticket.address, ticket.port);
    let tcp = match tokio::time::timeout(CONNECT_WITHIN, TcpStream::connect(&target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return refuse(Error::Unavailable(format!(
                "the guest's VNC server at {target} refused: {e}"
            )))
        }
        Err(_) => {
            return refuse(Error::Unavailable(format!(
                "the guest's VNC server at {target} did not answer within {} s",
                CONNECT_WITHIN.as_secs()
            )))
        }
    };
    let guest = ticket.guest_id;
    ws.protocols(vec!["binary"])
        .on_upgrade(move |socket| async move {
            let (up, down) = pipe(socket, tcp).await;
            tracing::info!(guest = %guest, up, down, "console closed");
        })
        .into_response()
}

/// Copies between the WebSocket and the VNC connection until either side ends; answers
/// the bytes sent up (browser to guest) and down.
async fn pipe(socket: poem::web::websocket::WebSocketStream, tcp: TcpStream) -> (u64, u64) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut tcp_rx, mut tcp_tx) = tcp.into_split();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let upward = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => t.into_bytes(),
                Message::Close(_) => break,
                _ => continue,
            };
            if tcp_tx.write_all(&bytes).await.is_err() {
                break;
            }
            up.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let _ = tcp_tx.shutdown().await;
    };
    let downward = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if ws_tx
                        .send(Message::Binary(buf[..k].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    down.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    // Either side ending ends the console: the other copy stops with its connection.
    tokio::select! {
        () = upward => {}
        () = downward => {}
    }
    (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_spent_once_and_expires() {
        let t = Tickets::default();
        let path = t.issue("u", "g", "127.0.0.1", 5900, now_ms() + 60_000);
        let value = path.trim_start_matches("/console/vnc?ticket=");
        assert_eq!(t.spend(value).map(|t| t.guest_id), Some("g".to_string()));
        assert!(t.spend(value).is_none(), "single use");
        let old = t.issue("u", "g", "127.0.0.1", 5900, now_ms() - 1);
        assert!(t
            .spend(old.trim_start_matches("/console/vnc?ticket="))
            .is_none());
    }
}
