//! HTTPS by SNI through the real gateway: curl with real certificate verification against
//! openssl s_server upstreams, over the IPv4 and IPv6 listeners.
mod common;

use std::time::Duration;

use common::{stderr, stdout, Lab};

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[[listener]]
name = "https"
bind = ["127.0.0.1:8443", "[::1]:8443"]
protocols = ["tls"]
default = "127.0.0.1:9009"

[[route]]
hosts = ["secure.example"]
to = "127.0.0.1:9001"

[[route]]
hosts = ["*.other.example"]
to = "[::1]:9002"
"#;

fn s_server(lab: &mut Lab, name: &str, host: &str, accept: &str, ready: &str) {
    let (cert, key) = lab.cert(host);
    lab.spawn(
        name,
        "openssl",
        &[
            "s_server", "-accept", accept, "-cert", &cert, "-key", &key, "-www", "-quiet",
        ],
        Some(ready.parse().unwrap()),
    );
}

fn curl_https(lab: &Lab, host: &str, gateway: &str) -> std::process::Output {
    let cert = lab
        .dir
        .join(&format!("{host}.crt"))
        .to_string_lossy()
        .into_owned();
    let resolve = format!("{host}:8443:{gateway}");
    lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &cert,
            "--resolve",
            &resolve,
            &format!("https://{host}:8443/"),
        ],
    )
}

#[test]
fn https_by_sni_reaches_the_routed_tls_server_byte_for_byte() {
    let mut lab = Lab::new("tls");
    s_server(
        &mut lab,
        "secure",
        "secure.example",
        "127.0.0.1:9101",
        "127.0.0.1:9101",
    );
    s_server(
        &mut lab,
        "other",
        "www.other.example",
        "[::1]:9102",
        "[::1]:9102",
    );
    lab.tap("127.0.0.1:9001", "127.0.0.1:9101");
    lab.tap("[::1]:9002", "[::1]:9102");
    lab.gateway(CONFIG);

    // curl verifies the upstream's certificate for the name it asked for: the TLS session is
    // end to end, the gateway only read the ClientHello.
    let out = curl_https(&lab, "secure.example", "127.0.0.1");
    assert!(out.status.success(), "curl via IPv4: {}", stderr(&out));
    assert!(
        stdout(&out).contains("s_server -accept 127.0.0.1:9101"),
        "{}",
        stdout(&out)
    );

    let out = curl_https(&lab, "www.other.example", "::1");
    assert!(out.status.success(), "curl via IPv6: {}", stderr(&out));
    assert!(
        stdout(&out).contains("s_server -accept [::1]:9102"),
        "{}",
        stdout(&out)
    );

    for tap in &lab.taps {
        let rec = &tap.wait_records(1, WAIT).unwrap()[0];
        assert_eq!(
            rec.up.first(),
            Some(&0x16),
            "a ClientHello record leads the stream"
        );
        assert!(
            rec.down.len() > 500,
            "the server's handshake and page came back"
        );
    }
    let line = lab.wait_access_log(&["host=secure.example", "path=splice outcome=ok"]);
    assert!(
        line.contains("protocol=tls") && line.contains("upstream=127.0.0.1:9001"),
        "{line}"
    );
    let line = lab.wait_access_log(&["host=www.other.example", "outcome=ok"]);
    assert!(line.contains("client=[::1]"), "{line}");
}

#[test]
fn the_byte_stream_is_identical_on_both_sides_of_the_gateway() {
    let mut lab = Lab::new("tlsbytes");
    s_server(
        &mut lab,
        "secure",
        "secure.example",
        "127.0.0.1:9101",
        "127.0.0.1:9101",
    );
    lab.tap("127.0.0.1:9000", "127.0.0.1:8443");
    lab.tap("127.0.0.1:9001", "127.0.0.1:9101");
    lab.gateway(CONFIG);
    let cert = lab
        .dir
        .join("secure.example.crt")
        .to_string_lossy()
        .into_owned();
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &cert,
            "--resolve",
            "secure.example:9000:127.0.0.1",
            "https://secure.example:9000/",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let client_side = &lab.taps[0].wait_records(1, WAIT).unwrap()[0];
    let server_side = &lab.taps[1].wait_records(1, WAIT).unwrap()[0];
    assert_eq!(
        client_side.up, server_side.up,
        "client to server bytes differ"
    );
    assert_eq!(
        client_side.down, server_side.down,
        "server to client bytes differ"
    );
}

#[test]
fn no_sni_and_unknown_names_use_the_listener_default() {
    let mut lab = Lab::new("tlsdefault");
    s_server(
        &mut lab,
        "fallback",
        "fallback.example",
        "127.0.0.1:9009",
        "127.0.0.1:9009",
    );
    lab.gateway(CONFIG);
    let out = lab.client(
        "openssl",
        &[
            "s_client",
            "-connect",
            "127.0.0.1:8443",
            "-noservername",
            "-brief",
        ],
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("CONNECTION ESTABLISHED"), "{text}");
    assert!(text.contains("CN = fallback.example"), "{text}");
    lab.wait_access_log(&[
        "protocol=tls",
        "host=-",
        "target=127.0.0.1:9009",
        "outcome=ok",
    ]);

    let out = lab.client(
        "openssl",
        &[
            "s_client",
            "-connect",
            "127.0.0.1:8443",
            "-servername",
            "nobody.example",
            "-brief",
        ],
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("CN = fallback.example"), "{text}");
    lab.wait_access_log(&["host=nobody.example", "target=127.0.0.1:9009", "outcome=ok"]);
}
