//! The metrics server's handler: a minimal HTTP/1.1 responder on the engine's own IO threads.
//! It reads the request line and headers (one line each, from the `Lines` codec), answers
//! `GET /metrics` with the text exposition and closes (`Connection: close`); anything else
//! gets 404 or 405. The whole request must arrive within
//! [`REQUEST_DEADLINE`](super::gate::REQUEST_DEADLINE), and incomplete requests are capped
//! (`gate.rs`): slow clients cannot hold the port against a scrape.

use std::sync::atomic::Ordering;

use tracing::debug;

use crate::codec::DecodeError;
use crate::conn::Conn;
use crate::handler::{Frame, Handler};
use crate::info::{CloseReason, ConnInfo};

use super::gate::REQUEST_DEADLINE;

use super::Metrics;

/// One connection to the metrics server.
pub(crate) struct MetricsHttp {
    metrics: Metrics,
    request: Option<String>,
    answered: bool,
}

/// The timer that ends a request not complete in time.
const DEADLINE_TIMER: u64 = 0;

impl MetricsHttp {
    pub(crate) fn new(metrics: Metrics) -> MetricsHttp {
        MetricsHttp {
            metrics,
            request: None,
            answered: false,
        }
    }

    /// The request is over (answered or refused): it no longer counts as pending.
    fn finish(&mut self, conn: &mut Conn<'_>) {
        self.answered = true;
        conn.cancel_timer(DEADLINE_TIMER);
        let gate = &self.metrics.inner.gate;
        gate.done(conn.info().id);
        gate.counts.answered.fetch_add(1, Ordering::Relaxed);
    }

    fn answer(&mut self, conn: &mut Conn<'_>) {
        self.finish(conn);
        let request = self.request.take().unwrap_or_default();
        let mut parts = request.split_ascii_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (status, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => ("200 OK", self.metrics.render()),
            ("GET" | "HEAD", _) => ("404 Not Found", "not found; try /metrics\n".to_string()),
            _ => ("405 Method Not Allowed", "only GET\n".to_string()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write(head.as_bytes());
        if method != "HEAD" {
            conn.write(body.as_bytes());
        }
        conn.close();
    }
}

impl Handler for MetricsHttp {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        conn.set_timer(DEADLINE_TIMER, REQUEST_DEADLINE);
        let (id, ip) = (conn.info().id, conn.peer_addr().ip());
        self.metrics.inner.gate.open(id, ip, conn.handle());
    }

    fn on_timer(&mut self, conn: &mut Conn<'_>, _id: u64) {
        if !self.answered {
            self.metrics.inner.gate.done(conn.info().id);
            self.metrics
                .inner
                .gate
                .counts
                .deadline
                .fetch_add(1, Ordering::Relaxed);
            debug!(peer = %conn.peer_addr(), "metrics: request not complete in time; closing");
            conn.close_with(CloseReason::Protocol(format!(
                "metrics request not complete within {} s",
                REQUEST_DEADLINE.as_secs()
            )));
        }
    }

    fn on_close(&mut self, info: &ConnInfo, _reason: &CloseReason) {
        self.metrics.inner.gate.done(info.id);
    }

    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        if self.answered {
            return;
        }
        let line = frame.payload();
        if self.request.is_none() {
            if line.is_empty() {
                return; // stray CRLF before a request line (RFC 9112 2.2)
            }
            self.request = Some(String::from_utf8_lossy(line).into_owned());
        } else if line.is_empty() {
            self.answer(conn); // the end of the headers
        }
    }

    fn on_decode_error(&mut self, conn: &mut Conn<'_>, _error: &DecodeError) {
        if !self.answered {
            self.finish(conn);
            conn.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        conn.close();
    }
}
