//! The preamble stage: bytes a trusted peer puts before the client's own, read and removed
//! before sniffing. Nothing is read here yet; an incoming PROXY protocol header will be
//! (issue 10), under the sniff stage's deadline and byte cap.
use tokio::net::TcpStream;

pub fn read(_client: &TcpStream) {}
