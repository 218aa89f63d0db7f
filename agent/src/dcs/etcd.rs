//! etcd's v3 JSON gateway, as Patroni itself uses it (`/v3/kv/range`,
//! `/v3/watch`): requests made, answers parsed. Pure: no sockets here. The
//! gateway writes 64-bit integers as strings (numbers are accepted too), keys
//! and values in base64, and leaves out fields at their zero value. Everything
//! is checked and capped: a hostile or broken etcd gets an error that says
//! what was wrong, never a panic or an allocation it sized.

use base64::Engine;
use serde_json::Value;

/// A range answer or a watch message larger than this is refused (a Patroni
/// cluster's keys are a few kilobytes).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Keys in one range answer, at most.
const MAX_KEYS: usize = 4096;

/// The header every answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    /// The store's revision when the answer was made (0 when left out, as in
    /// a canceled watch's header).
    pub revision: u64,
    pub raft_term: u64,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// The lease the key is attached to (0: none).
    pub lease: u64,
}

/// The answer to a range request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub header: Header,
    pub kvs: Vec<Kv>,
}

/// A change of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    /// The key's `mod_revision` is the deletion's revision.
    Delete {
        key: String,
        mod_revision: u64,
    },
}

impl Event {
    pub fn revision(&self) -> u64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// The watch is in place.
    Created(Header),
    /// Changes, in revision order.
    Events(Header, Vec<Event>),
    /// The watch ended: `compact_revision` set when the start revision was
    /// compacted away.
    Canceled {
        header: Header,
        compact_revision: Option<u64>,
        reason: String,
    },
    /// A progress notification (no events).
    Progress(Header),
}

/// Text from etcd as a message may carry it: escaped and cut.
fn shown(s: &str) -> String {
    crate::probe::server_text(s.as_bytes())
}

/// A 64-bit integer as the gateway writes it: a string of digits, or a number;
/// absent is 0.
fn int(v: Option<&Value>, what: &str) -> Result<u64, String> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("{what} is {:?}, not an integer", shown(s))),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("{what} is {n}, not a non-negative integer")),
        Some(other) => Err(format!("{what} is {}, not an integer", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bytes(v: Option<&Value>, what: &str) -> Result<Vec<u8>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("{what} is not base64 ({e})")),
        Some(other) => Err(format!("{what} is {}, not a base64 string", kind(other))),
    }
}

fn header(v: Option<&Value>) -> Result<Header, String> {
    let Some(h) = v.filter(|h| h.is_object()) else {
        return Err("no header".into());
    };
    Ok(Header {
        cluster_id: int(h.get("cluster_id"), "header.cluster_id")?,
        member_id: int(h.get("member_id"), "header.member_id")?,
        revision: int(h.get("revision"), "header.revision")?,
        raft_term: int(h.get("raft_term"), "header.raft_term")?,
    })
}

fn key(v: &Value, what: &str) -> Result<String, String> {
    let raw = bytes(v.get("key"), &format!("{what}.key"))?;
    String::from_utf8(raw).map_err(|_| format!("{what}.key is not UTF-8"))
}

fn kv(v: &Value, what: &str) -> Result<Kv, String> {
    if !v.is_object() {
        return Err(format!("{what} is {}, not an object", kind(v)));
    }
    Ok(Kv {
        key: key(v, what)?,
        value: bytes(v.get("value"), &format!("{what}.value"))?,
        create_revision: int(v.get("create_revision"), &format!("{what}.create_revision"))?,
        mod_revision: int(v.get("mod_revision"), &format!("{what}.mod_revision"))?,
        lease: int(v.get("lease"), &format!("{what}.lease"))?,
    })
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    if body.len() > MAX_MESSAGE {
        return Err(format!(
            "an answer of {} bytes (at most {MAX_MESSAGE})",
            body.len()
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("not JSON ({})", shown(&e.to_string())))
}

/// An error answer (`{"error": ..., "code": ..., "message": ...}`), said as
/// etcd said it.
fn error_of(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    let text = v
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| e.as_str())
        .or_else(|| e.get("message").and_then(Value::as_str))
        .unwrap_or("an error without a message");
    Some(format!("etcd answered an error: {}", shown(text)))
}

/// What an answer that is not a success says: etcd's error (JSON), else its
/// text (the gateway answers some refusals in plain text), escaped and cut.
pub fn error_text(body: &[u8]) -> String {
    if let Some(e) = serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(error_of)
    {
        return e;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    match text.trim() {
        "" => "no explanation".into(),
        t => format!("etcd answered: {}", shown(t)),
    }
}

/// Parses the answer to a range request.
pub fn parse_range(body: &[u8]) -> Result<Range, String> {
    let v = parse_json(body)?;
    if let Some(e) = error_of(&v) {
        return Err(e);
    }
    let header = header(v.get("header"))?;
    if header.revision == 0 || header.cluster_id == 0 {
        return Err("a range answer without a revision or a cluster id".into());
    }
    let kvs = match v.get("kvs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() > MAX_KEYS => {
            return Err(format!(
                "{} keys in one answer (at most {MAX_KEYS})",
                a.len()
            ))
        }
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, k)| kv(k, &format!("kvs[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("kvs is {}, not an array", kind(other))),
    };
    Ok(Range { header, kvs })
}

/// Parses one message of a watch stream (a JSON value already split off).
pub fn parse_watch(v: &Value) -> Result<Watch, String> {
    if let Some(e) = error_of(v) {
        return Err(e);
    }
    let Some(r) = v.get("result").filter(|r| r.is_object()) else {
        return Err(format!("a watch message without a result ({})", kind(v)));
    };
    let header = header(r.get("header"))?;
    let flag = |k: &str| r.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("canceled") {
        let compact = int(r.get("compact_revision"), "compact_revision")?;
        return Ok(Watch::Canceled {
            header,
            compact_revision: (compact > 0).then_some(compact),
            reason: shown(r.get("cancel_reason").and_then(Value::as_str).unwrap_or("")),
        });
    }
    if flag("created") {
        return Ok(Watch::Created(header));
    }
    let events = match r.get("events") {
        None | Some(Value::Null) => return Ok(Watch::Progress(header)),
        Some(Value::Array(a)) if a.len() > MAX_KEYS => {
            return Err(format!(
                "{} events in one message (at most {MAX_KEYS})",
                a.len()
            ))
        }
        Some(Value::Array(a)) => a,
        Some(other) => return Err(format!("events is {}, not an array", kind(other))),
    };
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let what = format!("events[{i}]");
        let k = e.get("kv").ok_or_else(|| format!("{what} has no kv"))?;
        let kv = kv(k, &format!("{what}.kv"))?;
        if kv.mod_revision == 0 {
            return Err(format!("{what} has no mod_revision"));
        }
        out.push(match e.get("type").and_then(Value::as_str) {
            None | Some("PUT") => Event::Put(kv),
            Some("DELETE") => Event::Delete {
                key: kv.key,
                mod_revision: kv.mod_revision,
            },
            Some(t) => return Err(format!("{what} has the type {:?}", shown(t))),
        });
    }
    // In revision order, as etcd sends them; anything else is not to be applied.
    if out.windows(2).any(|w| w[0].revision() > w[1].revision()) {
        return Err("events out of revision order".into());
    }
    Ok(Watch::Events(header, out))
}

/// Splits a watch stream's bytes into messages: concatenated JSON values, as
/// they arrive, in pieces of any size.
#[derive(Default)]
pub struct Stream {
    buf: Vec<u8>,
}

impl Stream {
    /// Takes in bytes; returns the whole messages they complete, parsed. A
    /// message larger than [`MAX_MESSAGE`], or bytes that are not JSON, end
    /// the stream with an error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Watch>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut used = 0;
        {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            loop {
                match values.next() {
                    Some(Ok(v)) => {
                        used = values.byte_offset();
                        out.push(parse_watch(&v)?);
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        return Err(format!(
                            "the watch stream is not JSON ({})",
                            shown(&e.to_string())
                        ))
                    }
                    None => {
                        used = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > MAX_MESSAGE {
            return Err(format!("a watch message of more than {MAX_MESSAGE} bytes"));
        }
        Ok(out)
    }
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The end of the range of every key that starts with `prefix` (etcd's
/// `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

/// A linearizable range request: `key` alone, or every key under it with
/// `prefix`.
pub fn range_request(key: &str, prefix: bool) -> Vec<u8> {
    let mut req = serde_json::json!({ "key": b64(key.as_bytes()) });
    if prefix {
        req["range_end"] = Value::String(b64(&prefix_end(key.as_bytes())));
    }
    req.to_string().into_bytes()
}

/// A watch of every key under `prefix` from `start_revision`, with previous
/// values.
pub fn watch_request(prefix: &str, start_revision: u64) -> Vec<u8> {
    serde_json::json!({
        "create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "start_revision": start_revision.to_string(),
            "prev_kv": true,
        }
    })
    .to_string()
    .into_bytes()
}

/// An authentication request (`/v3/auth/authenticate`); the answer's token goes
/// in the `Authorization` header of later requests.
pub fn auth_request(user: &str, password: &str) -> Vec<u8> {
    serde_json::json!({ "name": user, "password": password })
        .to_string()
        .into_bytes()
}

/// The token of an authentication answer.
pub fn parse_auth(body: &[u8]) -> Result<String, String> {
    let v = parse_json(body)?;
    if let Some(e) = error_of(&v) {
        return Err(e);
    }
    match v.get("token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() && t.len() <= 4096 && t.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(t.to_owned())
        }
        _ => Err("an authentication answer without a usable token".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As etcd 3.4.23's gateway answered (see the module's tests in dcs/mod.rs
    // for the live ones).
    const RANGE: &str = r#"{"header":{"cluster_id":"12101053776118486841","member_id":"15985099378392235387","revision":"27","raft_term":"2"},"kvs":[{"key":"L3NlcnZpY2UvZGVtby9sZWFkZXI=","create_revision":"13","mod_revision":"13","version":"1","value":"cGcx","lease":"9041999024670094347"}],"count":"1"}"#;

    #[test]
    fn a_refusal_is_said_as_etcd_said_it_json_or_text() {
        assert_eq!(
            error_text(br#"{"error":"etcdserver: authentication failed, invalid user ID or password","code":3}"#),
            "etcd answered an error: etcdserver: authentication failed, invalid user ID or password"
        );
        assert_eq!(
            error_text(b"CommonName of client sending a request against gateway will be ignored\n"),
            "etcd answered: CommonName of client sending a request against gateway will be ignored"
        );
        assert_eq!(error_text(b""), "no explanation");
        assert!(error_text(&[0xff; 4000]).len() < 600);
    }

    #[test]
    fn a_range_answer() {
        let r = parse_range(RANGE.as_bytes()).unwrap();
        assert_eq!(r.header.revision, 27);
        assert_eq!(r.header.raft_term, 2);
        assert_eq!(r.header.cluster_id, 12101053776118486841);
        assert_eq!(r.kvs.len(), 1);
        let kv = &r.kvs[0];
        assert_eq!(
            (kv.key.as_str(), kv.value.as_slice()),
            ("/service/demo/leader", &b"pg1"[..])
        );
        assert_eq!((kv.mod_revision, kv.lease), (13, 9041999024670094347));
        // No kvs: the key does not exist.
        let empty =
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"4","raft_term":"2"}}"#;
        assert!(parse_range(empty.as_bytes()).unwrap().kvs.is_empty());
        // Integers as numbers are taken too.
        let numbers = RANGE.replace("\"27\"", "27");
        assert_eq!(parse_range(numbers.as_bytes()).unwrap().header.revision, 27);
    }

    #[test]
    fn broken_answers_say_what_is_wrong() {
        let cases = [
            ("{", "not JSON"),
            ("[]", "no header"),
            (
                r#"{"header":{"cluster_id":"1","revision":"0"}}"#,
                "without a revision",
            ),
            (
                r#"{"header":{"cluster_id":"x1","revision":"3"}}"#,
                "cluster_id is \"x1\"",
            ),
            (
                r#"{"header":{"cluster_id":"1","revision":"-3"}}"#,
                "header.revision",
            ),
            (
                r#"{"header":{"cluster_id":"1","revision":"3"},"kvs":{}}"#,
                "kvs is an object",
            ),
            (
                r#"{"header":{"cluster_id":"1","revision":"3"},"kvs":[{"key":"!!"}]}"#,
                "kvs[0].key is not base64",
            ),
            (
                r#"{"header":{"cluster_id":"1","revision":"3"},"kvs":[{"key":"/w=="}]}"#,
                "not UTF-8",
            ),
            (
                r#"{"header":{"cluster_id":"1","revision":"3"},"kvs":[{"key":"YQ==","value":7}]}"#,
                "kvs[0].value is a number",
            ),
            (
                r#"{"error":"etcdserver: request timed out","code":14,"message":"etcdserver: request timed out"}"#,
                "request timed out",
            ),
        ];
        for (body, want) in cases {
            let e = parse_range(body.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let huge = vec![b' '; MAX_MESSAGE + 1];
        assert!(parse_range(&huge).unwrap_err().contains("at most"));
    }

    // A watch stream as etcd 3.4.23 sent it: created, a put, a put with its
    // previous value, a delete; then a watch from a compacted revision.
    const STREAM: &str = concat!(
        r#"{"result":{"header":{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"2","raft_term":"2"},"created":true}}"#,
        "\n",
        r#"{"result":{"header":{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"2","raft_term":"2"},"events":[{"kv":{"key":"L3NlcnZpY2UvZGJoYS9sZWFkZXI=","create_revision":"2","mod_revision":"2","version":"1","value":"cGcw"}}]}}"#,
        "\n",
        r#"{"result":{"header":{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"4","raft_term":"2"},"events":[{"type":"DELETE","kv":{"key":"L3NlcnZpY2UvZGJoYS9sZWFkZXI=","mod_revision":"4"},"prev_kv":{"key":"L3NlcnZpY2UvZGJoYS9sZWFkZXI=","create_revision":"2","mod_revision":"3","version":"2","value":"cGcx"}}]}}"#,
        "\n",
        r#"{"result":{"header":{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","raft_term":"2"},"canceled":true,"compact_revision":"3"}}"#,
        "\n"
    );

    #[test]
    fn a_watch_stream_in_pieces_of_any_size() {
        for piece in [1, 7, 100, STREAM.len()] {
            let mut s = Stream::default();
            let mut got = Vec::new();
            for chunk in STREAM.as_bytes().chunks(piece) {
                got.extend(s.push(chunk).unwrap());
            }
            assert_eq!(got.len(), 4, "pieces of {piece}");
            assert!(matches!(got[0], Watch::Created(h) if h.revision == 2));
            match &got[1] {
                Watch::Events(_, e) => {
                    assert_eq!(e.len(), 1);
                    assert!(
                        matches!(&e[0], Event::Put(kv) if kv.value == b"pg0" && kv.mod_revision == 2)
                    );
                }
                other => panic!("{other:?}"),
            }
            match &got[2] {
                Watch::Events(h, e) => {
                    assert_eq!(h.revision, 4);
                    assert_eq!(
                        e[0],
                        Event::Delete {
                            key: "/service/dbha/leader".into(),
                            mod_revision: 4
                        }
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                &got[3],
                Watch::Canceled {
                    compact_revision: Some(3),
                    ..
                }
            ));
        }
    }

    #[test]
    fn a_broken_watch_stream_ends() {
        for bad in [
            "not json",
            r#"{"result":{"header":{"revision":"2"},"events":[{"type":"EXPIRE","kv":{"key":"YQ==","mod_revision":"2"}}]}}"#,
            r#"{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"YQ=="}}]}}"#,
            r#"{"result":{"header":{"revision":"9"},"events":[{"kv":{"key":"YQ==","mod_revision":"9"}},{"kv":{"key":"YQ==","mod_revision":"8"}}]}}"#,
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#,
            r#"{"result":7}"#,
        ] {
            assert!(Stream::default().push(bad.as_bytes()).is_err(), "{bad}");
        }
        let mut s = Stream::default();
        let open = format!("{{\"result\":{{\"x\":\"{}", "a".repeat(MAX_MESSAGE));
        assert!(s.push(open.as_bytes()).unwrap_err().contains("more than"));
    }

    #[test]
    fn requests() {
        assert_eq!(prefix_end(b"/service/dbha/"), b"/service/dbha0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        let r: Value =
            serde_json::from_slice(&range_request("/service/dbha/leader", false)).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"key": "L3NlcnZpY2UvZGJoYS9sZWFkZXI="})
        );
        let w: Value = serde_json::from_slice(&watch_request("/service/dbha/", 28)).unwrap();
        assert_eq!(w["create_request"]["start_revision"], "28");
        assert_eq!(w["create_request"]["range_end"], b64(b"/service/dbha0"));
        assert_eq!(
            parse_auth(br#"{"header":{},"token":"abc.123"}"#).unwrap(),
            "abc.123"
        );
        assert!(parse_auth(b"{\"token\":\"a\\r\\nX: y\"}").is_err());
    }
}
