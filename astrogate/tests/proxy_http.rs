//! HTTP by Host and ACME HTTP-01 through the real gateway, with curl and Python's http.server.
mod common;

use std::time::Duration;

use common::{stderr, stdout, Lab};

const WAIT: Duration = Duration::from_secs(10);

fn config(extra: &str) -> String {
    format!(
        r#"
[gateway]
sniff_timeout = "2s"
data_path = "kernel"

[[listener]]
name = "http"
bind = ["127.0.0.1:8080", "[::1]:8080"]
protocols = ["acme", "http"]

[[route]]
hosts = ["blog.example", "*.blog.example"]
to = "127.0.0.1:9001"
acme = "127.0.0.1:9003"

[[route]]
hosts = ["shop.example"]
to = "127.0.0.1:9002"
{extra}
"#
    )
}

#[test]
fn http_by_host_reaches_the_routed_upstream_byte_for_byte() {
    let mut lab = Lab::new("http");
    lab.http_server(
        "blog",
        "127.0.0.1:9101".parse().unwrap(),
        &[("index.html", "blog home\n")],
    );
    lab.http_server(
        "shop",
        "127.0.0.1:9102".parse().unwrap(),
        &[("index.html", "shop home\n")],
    );
    // client -> tap 0 -> gateway -> tap 1/2 -> server
    lab.tap("127.0.0.1:9000", "127.0.0.1:8080");
    lab.tap("127.0.0.1:9001", "127.0.0.1:9101");
    lab.tap("127.0.0.1:9002", "127.0.0.1:9102");
    lab.gateway(&config(""));

    let out = lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "-H",
            "Host: www.blog.example:8080",
            "http://127.0.0.1:9000/",
        ],
    );
    assert!(out.status.success(), "curl: {}", stderr(&out));
    assert_eq!(stdout(&out), "blog home\n");

    let out = lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            "shop.example:8080:::1",
            "http://shop.example:8080/",
        ],
    );
    assert!(out.status.success(), "curl over IPv6: {}", stderr(&out));
    assert_eq!(stdout(&out), "shop home\n");

    let front = &lab.taps[0].wait_records(1, WAIT).unwrap()[0];
    let blog = &lab.taps[1].wait_records(1, WAIT).unwrap()[0];
    assert!(front.up.starts_with(b"GET / HTTP/1.1\r\n"));
    assert_eq!(
        front, blog,
        "the upstream must see exactly the client's bytes, both ways"
    );
    let shop = &lab.taps[2].wait_records(1, WAIT).unwrap()[0];
    assert!(shop
        .up
        .starts_with(b"GET / HTTP/1.1\r\nHost: shop.example:8080\r\n"));

    let line = lab.wait_access_log(&["host=www.blog.example", "outcome=ok"]);
    assert!(
        line.contains("protocol=http") && line.contains("path=kernel"),
        "{line}"
    );
    assert!(
        line.contains(&format!("up_bytes={}", front.up.len())),
        "{line}"
    );
    assert!(
        line.contains(&format!("down_bytes={}", front.down.len())),
        "{line}"
    );
}

#[test]
fn acme_challenges_are_proxied_to_the_acme_target() {
    let mut lab = Lab::new("acme");
    lab.http_server(
        "blog",
        "127.0.0.1:9001".parse().unwrap(),
        &[("index.html", "blog home\n")],
    );
    lab.http_server(
        "acme",
        "127.0.0.1:9103".parse().unwrap(),
        &[(
            ".well-known/acme-challenge/tok3n-ABC",
            "tok3n-ABC.thumbprint\n",
        )],
    );
    lab.tap("127.0.0.1:9003", "127.0.0.1:9103");
    lab.gateway(&config(""));
    let url = "http://blog.example:8080/.well-known/acme-challenge/tok3n-ABC";
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            "blog.example:8080:127.0.0.1",
            url,
        ],
    );
    assert!(out.status.success(), "curl: {}", stderr(&out));
    assert_eq!(stdout(&out), "tok3n-ABC.thumbprint\n");
    let acme = &lab.taps[0].wait_records(1, WAIT).unwrap()[0];
    assert!(acme
        .up
        .starts_with(b"GET /.well-known/acme-challenge/tok3n-ABC HTTP/1.1\r\n"));
    lab.wait_access_log(&[
        "protocol=acme",
        "host=blog.example",
        "target=127.0.0.1:9003",
        "outcome=ok",
    ]);

    // Every other path of the same host goes to the route's own target.
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            "blog.example:8080:127.0.0.1",
            "http://blog.example:8080/",
        ],
    );
    assert_eq!(stdout(&out), "blog home\n", "{}", stderr(&out));
}

#[test]
fn acme_challenges_can_be_redirected() {
    let mut lab = Lab::new("acmeredir");
    // The ACME host answers on port 80, the only ports CAs follow redirects to are 80 and 443.
    lab.http_server(
        "acmehost",
        "127.0.0.1:80".parse().unwrap(),
        &[(".well-known/acme-challenge/T0K", "T0K.key\n")],
    );
    lab.gateway(&config(
        "[[route]]\nhosts = [\"chat.example\"]\nto = \"127.0.0.1:9009\"\nacme_redirect = \"http://acme.example\"\n",
    ));
    let url = "http://chat.example:8080/.well-known/acme-challenge/T0K";
    let resolve = [
        "--resolve",
        "chat.example:8080:127.0.0.1",
        "--resolve",
        "acme.example:80:127.0.0.1",
    ];
    let mut args = vec![
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
    ];
    args.extend(resolve);
    args.push(url);
    let out = lab.client("curl", &args);
    assert_eq!(
        stdout(&out),
        "302 http://acme.example/.well-known/acme-challenge/T0K",
        "{}",
        stderr(&out)
    );
    let mut args = vec!["-sS", "-L", "--max-time", "5"];
    args.extend(resolve);
    args.push(url);
    let out = lab.client("curl", &args);
    assert_eq!(stdout(&out), "T0K.key\n", "{}", stderr(&out));
    lab.wait_access_log(&[
        "protocol=acme",
        "host=chat.example",
        "outcome=acme_redirect",
    ]);
}
