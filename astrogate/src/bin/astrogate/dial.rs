//! `astrogate dial`: the reference client for the dial header.
use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream},
    thread,
};

use anyhow::{bail, Context, Result};
use astrogate::sniff::{dial, Hostname, Sniff};

pub fn run(host: &str, port: u16, via: &str) -> Result<()> {
    let host = Hostname::parse(host.as_bytes()).map_err(|e| anyhow::anyhow!("{host}: {e}"))?;
    if port == 0 {
        bail!("port must be 1-65535");
    }
    let mut gw = TcpStream::connect(via).with_context(|| format!("connecting to {via}"))?;
    gw.set_nodelay(true)?;
    gw.write_all(format!("ASTROGATE-DIAL/1 {host} {port}\r\n").as_bytes())?;
    let (code, rest) = read_reply(&mut gw)?;
    if code != 200 {
        bail!("gateway refused: {code}");
    }
    let mut to_gw = gw.try_clone()?;
    let uploader = thread::spawn(move || -> io::Result<()> {
        io::copy(&mut io::stdin().lock(), &mut to_gw)?;
        to_gw.shutdown(Shutdown::Write)
    });
    let mut stdout = io::stdout().lock();
    stdout.write_all(&rest)?;
    io::copy(&mut gw, &mut stdout)?;
    stdout.flush()?;
    // The remote side closed; whatever stdin still had cannot be delivered.
    drop(uploader);
    Ok(())
}

/// Reads the reply line; returns the code and any bytes that arrived after it.
fn read_reply(gw: &mut TcpStream) -> Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match dial::parse_reply(&buf) {
            Sniff::Found((code, len)) => return Ok((code, buf.split_off(len))),
            Sniff::Incomplete if buf.len() < 512 => {}
            _ => bail!("the gateway did not answer with a dial reply"),
        }
        let n = gw.read(&mut chunk).context("reading the dial reply")?;
        if n == 0 {
            bail!("the gateway closed the connection without a dial reply");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
