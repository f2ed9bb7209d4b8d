//! The control connection's encryption: Noise IK (`Noise_IK_25519_ChaChaPoly_BLAKE2s`).
//!
//! Why Noise IK and not TLS with pinned keys: both sides already know the key they expect (the
//! client is configured with the gateway's, the gateway lists its clients'), which is exactly
//! IK's premise. The client's static key travels encrypted in the first message, so the gateway
//! can refuse a key it does not list before it sends a single byte back, and no certificates,
//! names or clocks are involved. One round trip, then transport messages.
use std::sync::Arc;

use snow::{HandshakeState, StatelessTransportState};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

use super::{keys::Key, wire::CONTROL_MAGIC};

pub const PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Binds both handshakes to this protocol and version: a handshake for anything else fails.
const PROLOGUE: &[u8] = b"astrogate tunnel control v1";
const MAX_MESSAGE: usize = 65535;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failed: {0}")]
    Handshake(snow::Error),
    #[error("message too long")]
    TooLong,
}

impl From<snow::Error> for NoiseError {
    fn from(e: snow::Error) -> Self {
        NoiseError::Handshake(e)
    }
}

fn builder() -> snow::Builder<'static> {
    snow::Builder::new(PARAMS.parse().expect("a valid Noise pattern"))
}

async fn write_frame(w: &mut (impl AsyncWriteExt + Unpin), msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("frame too long"))?;
    let mut frame = Vec::with_capacity(2 + msg.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    w.write_all(&frame).await
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let len = r.read_u16().await? as usize;
    let mut msg = vec![0; len];
    r.read_exact(&mut msg).await?;
    Ok(msg)
}

/// The client's side: sends the magic and the first message, reads the answer.
pub async fn initiate(
    mut stream: TcpStream,
    local: &Key,
    gateway: &Key,
) -> Result<(Sender, Receiver), NoiseError> {
    let mut hs = builder()
        .local_private_key(local)?
        .remote_public_key(gateway)?
        .prologue(PROLOGUE)?
        .build_initiator()?;
    let mut msg = vec![0; MAX_MESSAGE];
    let n = hs.write_message(&[], &mut msg)?;
    let mut first = CONTROL_MAGIC.to_vec();
    first.extend_from_slice(&(n as u16).to_be_bytes());
    first.extend_from_slice(&msg[..n]);
    stream.write_all(&first).await?;
    let answer = read_frame(&mut stream).await?;
    hs.read_message(&answer, &mut msg)?;
    split(stream, hs)
}

/// The gateway's side, after the magic: reads the first message and returns the client's
/// static key, before anything is sent back.
pub async fn accept(
    stream: &mut TcpStream,
    local: &Key,
) -> Result<(HandshakeState, Key), NoiseError> {
    let mut hs = builder()
        .local_private_key(local)?
        .prologue(PROLOGUE)?
        .build_responder()?;
    let first = read_frame(stream).await?;
    let mut payload = vec![0; MAX_MESSAGE];
    hs.read_message(&first, &mut payload)?;
    let remote: Key = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(NoiseError::Handshake(snow::Error::Input))?;
    Ok((hs, remote))
}

/// The gateway's side, once it has accepted the client's key: answers and starts transport.
pub async fn complete(
    mut stream: TcpStream,
    mut hs: HandshakeState,
) -> Result<(Sender, Receiver), NoiseError> {
    let mut msg = vec![0; MAX_MESSAGE];
    let n = hs.write_message(&[], &mut msg)?;
    write_frame(&mut stream, &msg[..n]).await?;
    split(stream, hs)
}

fn split(stream: TcpStream, hs: HandshakeState) -> Result<(Sender, Receiver), NoiseError> {
    let state = Arc::new(hs.into_stateless_transport_mode()?);
    let (r, w) = stream.into_split();
    Ok((
        Sender {
            half: w,
            state: state.clone(),
            nonce: 0,
        },
        Receiver {
            half: r,
            state,
            nonce: 0,
        },
    ))
}

/// The sending half of an established channel. Each direction counts its own nonces, so the
/// halves can live in different tasks.
pub struct Sender {
    half: OwnedWriteHalf,
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sender {
    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), NoiseError> {
        if plaintext.len() + TAG_LEN > MAX_MESSAGE {
            return Err(NoiseError::TooLong);
        }
        let mut msg = vec![0; plaintext.len() + TAG_LEN];
        let n = self.state.write_message(self.nonce, plaintext, &mut msg)?;
        self.nonce += 1;
        write_frame(&mut self.half, &msg[..n]).await?;
        Ok(())
    }
}

pub struct Receiver {
    half: OwnedReadHalf,
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Receiver {
    /// The next message. A message that fails authentication ends the channel: the peer, or
    /// something on the path, is not who the handshake said.
    pub async fn recv(&mut self) -> Result<Vec<u8>, NoiseError> {
        let msg = read_frame(&mut self.half).await?;
        let mut out = vec![0; msg.len()];
        let n = self.state.read_message(self.nonce, &msg, &mut out)?;
        self.nonce += 1;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::keys::generate;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn both_sides_authenticate_and_talk() {
        let (gw_priv, gw_pub) = generate().unwrap();
        let (cl_priv, cl_pub) = generate().unwrap();
        let (c, mut s) = pair().await;
        let client = tokio::spawn(async move { initiate(c, &cl_priv, &gw_pub).await });
        let mut magic = [0u8; 8];
        s.read_exact(&mut magic).await.unwrap();
        assert_eq!(&magic, CONTROL_MAGIC);
        let (hs, seen) = accept(&mut s, &gw_priv).await.unwrap();
        assert_eq!(seen, cl_pub);
        let (mut gs, mut gr) = complete(s, hs).await.unwrap();
        let (mut cs, mut cr) = client.await.unwrap().unwrap();
        for i in 0..3u8 {
            cs.send(&[i; 100]).await.unwrap();
            assert_eq!(gr.recv().await.unwrap(), vec![i; 100]);
            gs.send(&[i + 10]).await.unwrap();
            assert_eq!(cr.recv().await.unwrap(), vec![i + 10]);
        }
    }

    #[tokio::test]
    async fn a_client_with_the_wrong_gateway_key_fails() {
        let (gw_priv, _) = generate().unwrap();
        let (_, other_pub) = generate().unwrap();
        let (cl_priv, _) = generate().unwrap();
        let (c, mut s) = pair().await;
        let client = tokio::spawn(async move { initiate(c, &cl_priv, &other_pub).await });
        let mut magic = [0u8; 8];
        s.read_exact(&mut magic).await.unwrap();
        assert!(accept(&mut s, &gw_priv).await.is_err());
        drop(s);
        assert!(client.await.unwrap().is_err());
    }
}
