//! The mysql check's status answer from arbitrary packets: read as the answer
//! to one COM_QUERY (result sets, EOF and OK packets, errors), then judged,
//! and an ERR packet parsed as the server's refusal. A verdict, never a panic.
//!
//! The input is a sequence of packets, each a length byte then that many
//! bytes (a short last one is taken as it is).
#![no_main]

use dbha_agent::probe::mysql::session::server_error;
use dbha_agent::probe::mysql::status::{judge, read_answer, Flavor};
use libfuzzer_sys::fuzz_target;
use mysql_common::constants::CapabilityFlags;

fuzz_target!(|data: &[u8]| {
    let mut packets = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        packets.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    let mut next = packets.into_iter();
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41;
    let answer = read_answer(
        || next.next().ok_or(dbha_agent::probe::Failure::Closed),
        |p| server_error(p, caps),
    );
    if let Ok((sets, refused)) = answer {
        for flavor in [
            Flavor::MariaDb,
            Flavor::Mysql {
                replica_status: true,
            },
        ] {
            if let Err(e) = judge(&sets, flavor) {
                assert!(e.to_string().len() < 1024);
            }
        }
        if let Some(e) = refused {
            assert!(e.to_string().len() < 1024);
        }
    }
    let e = server_error(data, caps).to_string();
    assert!(e.len() < 1024 && !e.chars().any(char::is_control));
});
