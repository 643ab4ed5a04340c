//! The metrics server's handler: a minimal HTTP/1.1 responder on the engine's own IO threads.
//! It reads the request line and headers (one line each, from the `Lines` codec), answers
//! `GET /metrics` with the text exposition and closes (`Connection: close`); anything else
//! gets 404 or 405.

use crate::codec::DecodeError;
use crate::conn::Conn;
use crate::handler::{Frame, Handler};

use super::Metrics;

/// One connection to the metrics server.
pub(crate) struct MetricsHttp {
    metrics: Metrics,
    request: Option<String>,
    answered: bool,
}

impl MetricsHttp {
    pub(crate) fn new(metrics: Metrics) -> MetricsHttp {
        MetricsHttp {
            metrics,
            request: None,
            answered: false,
        }
    }

    fn answer(&mut self, conn: &mut Conn<'_>) {
        self.answered = true;
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
            self.answered = true;
            conn.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        conn.close();
    }
}
