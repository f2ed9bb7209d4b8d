//! The user-space path: copy between the sockets with large buffers.
//!
//! A buffer is held only while bytes are in flight: it is taken when a socket turns readable
//! and released when the socket has nothing more, so idle connections cost no buffer memory.
use std::{
    io::{self, ErrorKind},
    net::Shutdown,
};

use socket2::SockRef;
use tokio::net::TcpStream;

use super::{DirectionEnd, Forwarded, PathKind};

/// Forwards until both directions have ended. A FIN is passed on as a FIN (half-close); a reset
/// or failure on either side resets both, so the peer sees what happened.
pub async fn forward(client: &TcpStream, upstream: &TcpStream, buffer_size: usize) -> Forwarded {
    let up = pump(client, upstream, buffer_size);
    let down = pump(upstream, client, buffer_size);
    super::run_pair(PathKind::Userspace, true, (client, upstream), up, down).await
}

/// Makes the coming close send RST instead of FIN, so a reset propagates to the other peer.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Copies `src` to `dst` until EOF or error, then passes the EOF on.
async fn pump(src: &TcpStream, dst: &TcpStream, buffer_size: usize) -> (u64, DirectionEnd) {
    let mut total = 0u64;
    loop {
        if let Err(e) = src.readable().await {
            return (total, DirectionEnd::ReadFailed(e));
        }
        let mut buf = Vec::with_capacity(buffer_size);
        loop {
            buf.clear();
            match src.try_read_buf(&mut buf) {
                Ok(0) => {
                    let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                    return (total, DirectionEnd::Eof);
                }
                Ok(n) => {
                    if let Err(e) = write_all(dst, &buf[..n]).await {
                        return (total, DirectionEnd::WriteFailed(e));
                    }
                    total += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return (total, DirectionEnd::Reset)
                }
                Err(e) => return (total, DirectionEnd::ReadFailed(e)),
            }
        }
    }
}

pub async fn write_all(dst: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        dst.writable().await?;
        match dst.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
