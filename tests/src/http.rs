//! A minimal HTTP/1.1 client for the broker's admin API: one request per connection
//! (`Connection: close`), basic auth, bounded by [`WAIT`](crate::broker::WAIT). Enough for
//! tests, and it leaves the exact bytes on the wire in the test's hands.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::broker::WAIT;

/// An answer of the API.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Requests to one API address, as one user (or none).
#[derive(Debug, Clone)]
pub struct HttpClient {
    addr: String,
    authorization: Option<String>,
}

impl HttpClient {
    /// A client of the API at `addr` (`host:port`) sending no credentials.
    pub fn anonymous(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            authorization: None,
        }
    }

    /// A client that authenticates as `user` with `password` (HTTP basic auth).
    pub fn new(addr: &str, user: &str, password: &str) -> Self {
        let token = base64(format!("{user}:{password}").as_bytes());
        Self::with_authorization(addr, &format!("Basic {token}"))
    }

    /// A client that sends `value` as its `Authorization` header, whatever it holds.
    pub fn with_authorization(addr: &str, value: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            authorization: Some(value.to_owned()),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, None).await
    }

    /// `GET path` with an `Accept` header (content negotiation, as for `/metrics`).
    pub async fn get_accepting(&self, path: &str, accept: &str) -> HttpResponse {
        self.send("GET", path, &[("Accept", accept)], None).await
    }

    /// `PUT path` with a JSON `body`.
    pub async fn put(&self, path: &str, body: &str) -> HttpResponse {
        self.request("PUT", path, Some(body)).await
    }

    /// `POST path` with a JSON `body`.
    pub async fn post(&self, path: &str, body: &str) -> HttpResponse {
        self.request("POST", path, Some(body)).await
    }

    /// `DELETE path`, with a JSON `body` if given.
    pub async fn delete(&self, path: &str, body: Option<&str>) -> HttpResponse {
        self.request("DELETE", path, body).await
    }

    /// Sends one request on a fresh connection and reads the whole answer; panics past
    /// [`WAIT`] or on anything that is not a well-formed HTTP/1.1 answer.
    pub async fn request(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        self.send(method, path, &[], body).await
    }

    /// [`request`](Self::request) with extra header lines.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(auth) = &self.authorization {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method != "GET" {
            head.push_str("Content-Type: application/json\r\n");
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let exchange = async {
            let mut stream = TcpStream::connect(&self.addr).await?;
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            std::io::Result::Ok(raw)
        };
        let raw = tokio::time::timeout(WAIT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {path}: not an HTTP answer: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }
}

/// Parses a whole answer read up to the end of the connection.
fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect::<Option<_>>()?;
    let mut body = &raw[split + 4..];
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if find("transfer-encoding").is_some() {
        // The API sends sized bodies; a chunked one would be a change worth noticing.
        return None;
    }
    if let Some(len) = find("content-length") {
        let len: usize = len.parse().ok()?;
        body = body.get(..len)?;
    }
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).ok()?,
    })
}

/// Standard base64 with padding (RFC 4648), for basic-auth credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_examples() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("guest:guest", "Z3Vlc3Q6Z3Vlc3Q="),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn answers_are_parsed_up_to_their_length() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}junk";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.body, "{}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(parse_response(b"garbage\r\n\r\n").is_none());
    }
}
