//! The dial header with the reference client, and XMPP c2s with a real client (sendxmpp)
//! negotiating STARTTLS and SASL with a real server (prosody) through the gateway.
mod common;

use std::{process::Stdio, time::Duration};

use astrogate_lab::{
    services::{self, ProsodySpec},
    wait_for,
};
use common::{stderr, Lab, GATEWAY};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn dial_reaches_the_named_host_and_strips_only_the_header() {
    let mut lab = Lab::new("dial");
    lab.spawn(
        "echo",
        "socat",
        &["TCP-LISTEN:9101,bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"],
        Some("127.0.0.1:9101".parse().unwrap()),
    );
    lab.tap("127.0.0.1:9001", "127.0.0.1:9101");
    lab.gateway(
        r#"
[[listener]]
name = "dial"
bind = ["127.0.0.1:7070", "[::1]:7070"]
protocols = ["dial"]

[[route]]
hosts = ["echo.example"]
to = "127.0.0.1"
"#,
    );
    // 300 KB of varied bytes: more than one buffer, and not all text.
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let input = lab.dir.write("payload.bin", &payload).unwrap();
    for via in ["127.0.0.1:7070", "[::1]:7070"] {
        let mut cmd = lab.ns.command(GATEWAY);
        cmd.args(["dial", "echo.example", "9001", "--via", via])
            .stdin(Stdio::from(std::fs::File::open(&input).unwrap()));
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "dial via {via}: {}", stderr(&out));
        assert!(
            out.stdout == payload,
            "echo via {via} differs ({} bytes back)",
            out.stdout.len()
        );
    }
    let records = lab.taps[0].wait_records(2, WAIT).unwrap();
    for rec in &records {
        assert!(
            rec.up == payload,
            "the upstream must get the payload without the header"
        );
        assert!(rec.down == payload);
    }
    // `auto` puts dial, which may carry bulk data, on splice (which copies only reads smaller
    // than its probe buffer).
    let line = lab.wait_access_log(&[
        "protocol=dial",
        "host=echo.example",
        "path=splice outcome=ok",
    ]);
    assert!(
        line.contains("upstream=127.0.0.1:9001"),
        "the dial port applies: {line}"
    );
    assert!(
        line.contains(&format!("up_bytes={}", payload.len())),
        "{line}"
    );
}

/// Starts prosody for `domain` with c2s on `c2s` and s2s on `s2s` on the namespace's loopback,
/// with the user alice.
pub fn prosody(lab: &mut Lab, domain: &str, c2s: u16, s2s: u16) {
    let spec = ProsodySpec {
        name: "prosody",
        domain,
        interfaces: &["127.0.0.1", "::1"],
        c2s_port: c2s,
        s2s_port: s2s,
        users: &[("alice", "s3cret")],
    };
    let child = services::prosody(&lab.ns, &lab.dir, &spec).unwrap_or_else(|e| panic!("{e}"));
    lab.children.push(child);
}

#[test]
fn xmpp_client_negotiates_starttls_and_sasl_through_the_gateway() {
    let mut lab = Lab::new("xmpp");
    prosody(&mut lab, "chat.example", 9322, 9369);
    lab.tap("127.0.0.1:9000", "127.0.0.1:5222");
    lab.tap("127.0.0.1:9222", "127.0.0.1:9322");
    lab.gateway(
        r#"
[[listener]]
name = "xmpp"
bind = ["127.0.0.1:5222"]
protocols = ["xmpp"]

[[route]]
hosts = ["chat.example"]
to = "127.0.0.1:9222"
"#,
    );
    let message = lab
        .dir
        .write("message.txt", "hello through astrogate\n")
        .unwrap();
    let message = message.to_str().unwrap();
    let out = lab.client(
        "sendxmpp",
        &[
            "-j",
            "127.0.0.1:9000",
            "-o",
            "chat.example",
            "-u",
            "alice",
            "-p",
            "s3cret",
        ]
        .into_iter()
        .chain(["-t", "-n", "-m", message, "alice@chat.example"])
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "sendxmpp: {}", stderr(&out));
    let prosody_log = || {
        lab.children
            .iter()
            .find(|c| c.name() == "prosody")
            .map(|c| c.output())
            .unwrap_or_default()
    };
    wait_for("prosody to authenticate alice", WAIT, || {
        prosody_log()
            .contains("Authenticated as alice@chat.example")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", prosody_log()));
    assert!(
        prosody_log().contains("Stream encrypted (TLSv1.3"),
        "{}",
        prosody_log()
    );
    let client_side = &lab.taps[0].wait_records(1, WAIT).unwrap()[0];
    let server_side = &lab.taps[1].wait_records(1, WAIT).unwrap()[0];
    assert!(client_side
        .up
        .starts_with(b"<?xml version='1.0'?><stream:stream"));
    assert_eq!(
        client_side, server_side,
        "the server must see exactly the client's bytes, both ways"
    );
    // `auto` takes splice(2) for XMPP too: the kernel path is experimental.
    lab.wait_access_log(&[
        "protocol=xmpp",
        "host=chat.example",
        "path=splice outcome=ok",
    ]);
}
