//! A minimal VNC (RFB 3.8) client for measuring a console: VNC authentication, then full
//! raw framebuffer updates, either straight to a VNC port or through corral's console
//! WebSocket. It answers how many bytes of pixels arrived and how long they took.

use std::time::{Duration, Instant};

use des::cipher::{BlockEncrypt, KeyInit};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Where the RFB bytes travel.
pub enum Link {
    Tcp(TcpStream),
    Ws(Box<Ws>, Vec<u8>),
}

impl Link {
    /// A direct connection to a VNC server.
    pub async fn tcp(addr: &str) -> Link {
        Link::Tcp(TcpStream::connect(addr).await.unwrap())
    }

    /// corral's console WebSocket at `url` (ws://…/console/vnc?ticket=…), as `token`.
    pub async fn websocket(url: &str, token: &str) -> Link {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .unwrap_or_else(|e| panic!("console websocket {url}: {e}"));
        Link::Ws(Box::new(ws), Vec::new())
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        match self {
            Link::Tcp(s) => {
                let mut buf = vec![0u8; n];
                s.read_exact(&mut buf).await.unwrap();
                buf
            }
            Link::Ws(ws, pending) => {
                while pending.len() < n {
                    match ws.next().await.expect("websocket ended").unwrap() {
                        Message::Binary(b) => pending.extend_from_slice(&b),
                        Message::Close(c) => panic!("websocket closed: {c:?}"),
                        _ => {}
                    }
                }
                pending.drain(..n).collect()
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        match self {
            Link::Tcp(s) => s.write_all(bytes).await.unwrap(),
            Link::Ws(ws, _) => ws
                .send(Message::Binary(bytes.to_vec().into()))
                .await
                .unwrap(),
        }
    }
}

/// VNC authentication's response: the challenge DES-encrypted with the password (eight
/// bytes, each bit-reversed, as VNC has always done it).
fn vnc_response(password: &str, challenge: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    let cipher = des::Des::new_from_slice(&key).unwrap();
    let mut out = challenge.to_vec();
    for block in out.chunks_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

fn u16_at(b: &[u8], i: usize) -> usize {
    u16::from_be_bytes([b[i], b[i + 1]]) as usize
}

/// Logs in with `password` and asks for `frames` full raw updates one after another;
/// answers (pixel bytes received, time taken, width, height).
pub async fn measure(
    mut link: Link,
    password: &str,
    frames: usize,
) -> (u64, Duration, usize, usize) {
    let version = link.read_exact(12).await;
    assert!(version.starts_with(b"RFB 003."), "{version:?}");
    link.write(b"RFB 003.008\n").await;
    let n = link.read_exact(1).await[0] as usize;
    assert!(n > 0, "the VNC server refused the connection");
    let types = link.read_exact(n).await;
    assert!(
        types.contains(&2),
        "no VNC authentication offered: {types:?}"
    );
    link.write(&[2]).await;
    let challenge = link.read_exact(16).await;
    link.write(&vnc_response(password, &challenge)).await;
    let result = link.read_exact(4).await;
    assert_eq!(result, [0, 0, 0, 0], "VNC authentication failed");
    link.write(&[1]).await; // ClientInit: shared
    let init = link.read_exact(24).await;
    let (w, h) = (u16_at(&init, 0), u16_at(&init, 2));
    let bpp = init[4] as usize / 8;
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    link.read_exact(name_len).await;
    // SetEncodings: raw only, so every update is the whole picture.
    link.write(&[2, 0, 0, 1, 0, 0, 0, 0]).await;
    let request = {
        let mut r = vec![3u8, 0, 0, 0, 0, 0];
        r.extend_from_slice(&(w as u16).to_be_bytes());
        r.extend_from_slice(&(h as u16).to_be_bytes());
        r
    };
    let t0 = Instant::now();
    let mut bytes = 0u64;
    let mut got = 0;
    while got < frames {
        link.write(&request).await;
        let head = link.read_exact(4).await;
        assert_eq!(
            head[0], 0,
            "expected a framebuffer update, got message {}",
            head[0]
        );
        let rects = u16_at(&head, 2);
        for _ in 0..rects {
            let r = link.read_exact(12).await;
            let (rw, rh) = (u16_at(&r, 4), u16_at(&r, 6));
            let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            if enc == 0 {
                let px = link.read_exact(rw * rh * bpp).await;
                bytes += px.len() as u64;
            }
        }
        got += 1;
    }
    (bytes, t0.elapsed(), w, h)
}

/// The HTTP status the console WebSocket at `url` refuses `token` with (None: it opened).
pub async fn refused_with(url: &str, token: &str) -> Option<u16> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Some(resp.status().as_u16()),
        Err(e) => panic!("console websocket {url}: {e}"),
    }
}
