//! A replica's response body relayed to the client chunk by chunk, never buffered
//! whole. Server-sent events are forwarded whole-event at a time (a chunk ending
//! inside an event waits for the rest of that event), so a stream cut by a failing
//! replica can end with one well-formed error event instead of half an event.

use crate::backend::{Backend, InflightGuard};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// What to do once when a stream is cut: gets the replica and the message.
pub type OnCut = Box<dyn FnOnce(&Arc<Backend>, &str) + Send>;

/// What the relay needs of the stream it forwards.
pub struct Relay {
    pub upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    /// The first chunk, already read (the request was committed on it).
    pub first: Option<Bytes>,
    /// Some for `text/event-stream`: the bytes of an event not yet complete.
    pub sse: Option<BytesMut>,
    /// Longest wait for the next chunk.
    pub idle: Duration,
    /// Keeps the request counted in flight until the body ends or the client leaves.
    pub guard: InflightGuard,
    /// Called once when the stream is cut (message), e.g. to eject the replica.
    pub on_cut: OnCut,
    pub done: bool,
}

/// The SSE error event that ends a cut stream, in the OpenAI error shape (the
/// official clients raise it as an API error).
pub fn error_event(message: &str) -> Bytes {
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "server_error",
        "param": null,
        "code": "replica_failed",
    }});
    Bytes::from(format!("data: {body}\n\n"))
}

/// The offset just past the last complete event in `buf` (after a blank line).
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    lf.max(crlf)
}

impl Relay {
    /// The next piece for the client; None at the end.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if self.done {
                return None;
            }
            let chunk = match self.first.take() {
                Some(b) => Ok(Some(b)),
                None => match tokio::time::timeout(self.idle, self.upstream.next()).await {
                    Err(_) => Err(format!(
                        "replica {} sent nothing for {:.0} s (--idle-timeout); the answer is incomplete, retry the request",
                        self.guard.backend().url,
                        self.idle.as_secs_f64()
                    )),
                    Ok(None) => Ok(None),
                    Ok(Some(Err(e))) => Err(format!(
                        "replica {} broke off the response ({e}); the answer is incomplete, retry the request",
                        self.guard.backend().url
                    )),
                    Ok(Some(Ok(b))) => Ok(Some(b)),
                },
            };
            match chunk {
                Ok(Some(b)) => match &mut self.sse {
                    None => return Some(Ok(b)),
                    Some(tail) => {
                        tail.extend_from_slice(&b);
                        if let Some(end) = last_event_end(tail) {
                            return Some(Ok(tail.split_to(end).freeze()));
                        }
                    }
                },
                Ok(None) => {
                    self.done = true;
                    return match &mut self.sse {
                        Some(tail) if !tail.is_empty() => Some(Ok(tail.split().freeze())),
                        _ => None,
                    };
                }
                Err(message) => {
                    self.done = true;
                    let on_cut = std::mem::replace(&mut self.on_cut, Box::new(|_, _| {}));
                    on_cut(self.guard.backend(), &message);
                    tracing::warn!("{message}");
                    return Some(match self.sse {
                        Some(_) => Ok(error_event(&message)),
                        None => Err(std::io::Error::other(message)),
                    });
                }
            }
        }
    }

    /// The relay as a body stream.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        futures_util::stream::unfold(self, |mut r| async move {
            let item = r.next().await?;
            Some((item, r))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_the_last_whole_event() {
        assert_eq!(last_event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(last_event_end(b"data: a\n\ndata: b\n\n"), Some(18));
        assert_eq!(last_event_end(b"data: a\r\n\r\nda"), Some(11));
        assert_eq!(last_event_end(b"data: a\n"), None);
    }

    #[test]
    fn error_events_are_json_in_the_openai_shape() {
        let ev = error_event("replica x broke off \"quote\"");
        let text = std::str::from_utf8(&ev).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(text.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(json["error"]["code"], "replica_failed");
        assert!(text.ends_with("\n\n"));
    }
}
