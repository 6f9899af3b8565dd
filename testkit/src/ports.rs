//! Free loopback ports: bound to port 0, then released for the caller to use. They are free
//! when asked; whoever binds one must retry if another process took it in the meantime.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// `N` distinct free addresses on 127.0.0.1 (all bound at once, so no two are the same).
pub fn free_addrs<const N: usize>() -> io::Result<[SocketAddr; N]> {
    let mut listeners = Vec::with_capacity(N);
    for _ in 0..N {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind a free loopback port: {e}"))
        })?;
        listeners.push(listener);
    }
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); N];
    for (addr, listener) in addrs.iter_mut().zip(&listeners) {
        *addr = listener.local_addr()?;
    }
    Ok(addrs)
}

/// A free port on 127.0.0.1.
///
/// # Panics
///
/// When no port can be bound; [`free_addrs`] returns the error instead.
pub fn free_port() -> u16 {
    match free_addrs::<1>() {
        Ok([addr]) => addr.port(),
        Err(e) => panic!("{e}"),
    }
}
