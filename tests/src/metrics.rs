//! Reading the agent's Prometheus endpoint: one GET, and one sample out of it.

/// `GET path` from `addr` (HTTP/1.1, the connection closed by the server); the
/// whole response, headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `name_and_labels` (written as in the exposition,
/// e.g. `dbha_endpoint_up{alias="default"}`) in `text`; panics naming it when
/// absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{text}"))
        .parse()
        .unwrap()
}
