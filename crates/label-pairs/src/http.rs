//! A small HTTP/1.1 layer for the labelling page: std's sockets with `httparse` for the
//! request head, one request per connection (`Connection: close`), and every dimension
//! bounded before anything is allocated for it: the head ([`MAX_HEAD`]), the body
//! ([`MAX_BODY`], from its Content-Length; chunked bodies are refused), and the time a
//! client may take to send or receive ([`IO_TIMEOUT`]).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest wait for a client to send or take data.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADERS: usize = 64;

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first query parameter of that name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body of the given content type.
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(
            status,
            "application/json; charset=utf-8",
            value.to_string().into_bytes(),
        )
    }

    /// A JSON error: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// Answer with this status and message, then close.
    Reply(u16, &'static str),
    /// The connection failed or timed out: close it.
    Closed,
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// Reads one request (head, then a body of at most [`MAX_BODY`] bytes). The whole request
/// must arrive within [`IO_TIMEOUT`]: a client trickling bytes cannot hold a connection.
pub fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let read = |stream: &mut TcpStream, into: &mut [u8]| -> Result<usize, ReadError> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(ReadError::Closed);
        }
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.read(into))
            .map_err(|_| ReadError::Closed)
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (head_len, mut req, length) = loop {
        let n = read(stream, &mut chunk)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(ReadError::Reply(431, "request head too large"))
            }
            Ok(httparse::Status::Complete(len)) => {
                let target = parsed.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let query = parse_query(query).ok_or(ReadError::Reply(400, "bad query string"))?;
                let mut req = Request {
                    method: parsed.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query,
                    ..Request::default()
                };
                for h in parsed.headers.iter() {
                    let value = std::str::from_utf8(h.value)
                        .map_err(|_| ReadError::Reply(400, "header is not UTF-8"))?;
                    req.headers
                        .push((h.name.to_ascii_lowercase(), value.trim().to_string()));
                }
                if req.header("transfer-encoding").is_some() {
                    return Err(ReadError::Reply(
                        411,
                        "chunked bodies are not accepted: send a Content-Length",
                    ));
                }
                let length = match req.header("content-length") {
                    None => 0,
                    Some(v) => v
                        .parse::<u64>()
                        .map_err(|_| ReadError::Reply(400, "bad Content-Length"))?,
                };
                if length > MAX_BODY as u64 {
                    return Err(ReadError::Reply(413, "request body too large"));
                }
                break (len, req, length as usize);
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Reply(431, "request head too large"))
            }
            Err(_) => return Err(ReadError::Reply(400, "malformed request")),
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reply(431, "request head too large"));
        }
    };
    if length > 0
        && buf.len() - head_len < length
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| ReadError::Closed)?;
    }
    let mut body = buf.split_off(head_len);
    body.truncate(length);
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = read(stream, &mut chunk[..want])?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    req.body = body;
    Ok(req)
}

/// Writes a response and closes the connection, giving the client a moment to read it
/// even when it is still sending a body that will not be read.
pub fn write_response(stream: &mut TcpStream, resp: &Response) {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    ));
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&resp.body))
        .and_then(|()| stream.flush());
    if sent.is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
        // Drain (boundedly) what the client still sends, so that closing does not reset
        // the connection before it read the response.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < 4 * MAX_BODY {
            match stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

/// Reads one request from a fresh connection, answers it with `handle`, and closes.
pub fn serve_connection(mut stream: TcpStream, handle: impl FnOnce(&Request) -> Response) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let resp = match read_request(&mut stream) {
        Ok(req) => handle(&req),
        Err(ReadError::Reply(status, message)) => Response::error(status, message),
        Err(ReadError::Closed) => return,
    };
    write_response(&mut stream, &resp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_decode() {
        assert_eq!(percent_decode("a+b%20c%2Fd").as_deref(), Some("a b c/d"));
        assert_eq!(percent_decode("%E2%86%90").as_deref(), Some("\u{2190}"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(
            parse_query("token=x&labeller=ann+b&flag").unwrap(),
            vec![
                ("token".to_string(), "x".to_string()),
                ("labeller".to_string(), "ann b".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
    }
}
