//! The handshake line a spawned plugin prints first on stdout, telling
//! Pulse where it listens (as HashiCorp go-plugin does):
//! `PULSE_PLUGIN|1|tcp|127.0.0.1:45123|grpc`. Pure code.

use std::net::SocketAddr;

/// The first field of every handshake line.
pub const HANDSHAKE_MAGIC: &str = "PULSE_PLUGIN";
/// The handshake and plugin protocol version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The line a plugin listening on `addr` prints.
pub fn handshake_line(addr: SocketAddr) -> String {
    format!("{HANDSHAKE_MAGIC}|{PROTOCOL_VERSION}|tcp|{addr}|grpc")
}

/// Reads a handshake line (without its newline).
///
/// # Errors
/// `bad_handshake` with what is wrong.
pub fn parse_handshake(line: &str) -> Result<SocketAddr, String> {
    let bad = |why: &str| {
        format!("bad_handshake: {why} in {line:?}; expected {HANDSHAKE_MAGIC}|1|tcp|HOST:PORT|grpc")
    };
    let fields: Vec<&str> = line.trim_end_matches('\r').split('|').collect();
    let [magic, version, network, addr, protocol] = fields.as_slice() else {
        return Err(bad("not 5 fields"));
    };
    if *magic != HANDSHAKE_MAGIC {
        return Err(bad("wrong magic"));
    }
    if *version != PROTOCOL_VERSION.to_string() {
        return Err(bad("unsupported protocol version"));
    }
    if *network != "tcp" || *protocol != "grpc" {
        return Err(bad("only tcp and grpc are supported"));
    }
    addr.parse().map_err(|_| bad("the address is not IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_lines() {
        let addr: SocketAddr = "127.0.0.1:45123".parse().unwrap();
        assert_eq!(parse_handshake(&handshake_line(addr)).unwrap(), addr);
        for bad in [
            "",
            "hello",
            "PULSE_PLUGIN|2|tcp|127.0.0.1:1|grpc",
            "PULSE_PLUGIN|1|unix|/tmp/s|grpc",
            "PULSE_PLUGIN|1|tcp|localhost:1|grpc",
            "PULSE_PLUGIN|1|tcp|127.0.0.1:1|grpc|extra",
            "OTHER|1|tcp|127.0.0.1:1|grpc",
        ] {
            let e = parse_handshake(bad).unwrap_err();
            assert!(e.starts_with("bad_handshake"), "{e}");
        }
    }
}
