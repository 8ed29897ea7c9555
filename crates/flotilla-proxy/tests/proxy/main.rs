//! Integration tests of flotilla-proxy: a real proxy between real sockets and a real hyper
//! upstream on 127.0.0.1.

mod forwarding;
mod injection;
mod limits;
mod moving;
mod sessions;
mod tls;
mod util;
