//! Loopback ports for the servers a test starts.

use std::net::{SocketAddr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0). Another
/// process could take it before the test binds it; on loopback in a test run that is rare enough.
pub fn free_port() -> u16 {
    free_loopback_addr()
        .expect("the kernel hands out a free loopback port")
        .port()
}

/// [`free_port`] as an address on 127.0.0.1, for a harness that reports the failure itself.
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_free_port_can_be_bound() {
        let port = super::free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }
}
