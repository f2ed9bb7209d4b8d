//! The Prometheus endpoint, scraped while traffic flows: the counters match what the test sent.
//!
//! Connections on every data path move known byte counts (checked by hash at both ends); the
//! scrape taken while they are open shows them active, and the one after shows each connection
//! under its listener, protocol, outcome and path, the exact bytes each way, the refusals by
//! reason, the sniff and connect histograms' counts and the kernel path's counters. A scraper
//! that connects and never asks holds nobody up. Reloads are counted by result.
mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use astrogate_lab::wait_for;
use common::{
    stdout,
    streams::{dial, finish, hash_to_eof, send_pattern, Pattern, Server},
    Lab,
};
use sha2::{Digest, Sha256};

const CONFIG: &str = r#"
[gateway]
sniff_timeout = "3s"

[metrics]
bind = "127.0.0.1:9100"

[[listener]]
name = "via-splice"
bind = ["127.0.0.1:8081"]
protocols = ["dial"]
data_path = "splice"

[[listener]]
name = "via-userspace"
bind = ["127.0.0.1:8082"]
protocols = ["dial"]
data_path = "userspace"

[[listener]]
name = "via-kernel"
bind = ["127.0.0.1:8083"]
protocols = ["dial"]
data_path = "kernel"

[[listener]]
name = "closed"
bind = ["127.0.0.1:8084"]
protocols = ["http"]
deny = ["127.0.0.0/8"]

[[route]]
hosts = ["data.test"]
to = "127.0.0.1:9300"
"#;

const LISTENERS: [(&str, &str, &str); 3] = [
    ("via-splice", "127.0.0.1:8081", "splice"),
    ("via-userspace", "127.0.0.1:8082", "userspace"),
    ("via-kernel", "127.0.0.1:8083", "kernel"),
];
const PER_LISTENER: usize = 4;

/// Bytes connection `i` sends up; the server answers with `down_len` of what it received.
fn up_len(i: usize) -> u64 {
    (3 << 20) + i as u64 * 4097
}

fn down_len(up: u64) -> u64 {
    up / 2 + 777
}

fn pattern_hash(seed: u64, len: u64) -> [u8; 32] {
    let mut pattern = Pattern::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    hash.finalize().into()
}

/// GET `path` from the metrics endpoint: (status line, body).
fn get(lab: &Lab, path: &str, method: &str) -> (String, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\n\r\n");
    let answer = lab
        .ns
        .enter(move || {
            let mut s = TcpStream::connect("127.0.0.1:9100")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            std::io::Result::Ok(answer)
        })
        .unwrap()
        .expect("scraping the metrics endpoint");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn scrape(lab: &Lab) -> String {
    let (status, body) = get(lab, "/metrics", "GET");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// The sum of every series of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, set) = series.split_once('{').unwrap_or((series, ""));
            let wanted = labels
                .iter()
                .all(|(k, val)| set.contains(&format!("{k}=\"{val}\"")));
            (n == name && wanted).then(|| v.parse::<f64>().unwrap())
        })
        .sum()
}

#[test]
fn a_scrape_during_traffic_counts_what_the_test_sent() {
    let mut lab = Lab::new("metrics");
    // The upstream: hashes everything a client sends, then answers with a pattern whose length
    // depends on how much it got.
    let received = Arc::new(Mutex::new(HashMap::new()));
    let got = received.clone();
    let _server = Server::start(&lab.ns, "127.0.0.1:9300", move |mut s| {
        let (n, hash) = hash_to_eof(&mut s).unwrap();
        got.lock().unwrap().insert(n, hash);
        send_pattern(&mut s, n, down_len(n)).unwrap();
        finish(&s);
    });
    lab.gateway(CONFIG);

    let before = scrape(&lab);
    assert_eq!(value(&before, "astrogate_connections_active", &[]), 0.0);
    assert_eq!(value(&before, "astrogate_connections_total", &[]), 0.0);

    // A scraper that connects and never sends its request must not hold anything up.
    let _stuck = lab
        .ns
        .enter(|| TcpStream::connect("127.0.0.1:9100"))
        .unwrap()
        .unwrap();

    // Every connection open at once, dialled and idle: the gauge shows them all.
    let mut open = Vec::new();
    for (i, (name, addr, path)) in LISTENERS
        .iter()
        .flat_map(|l| std::iter::repeat_n(l, PER_LISTENER))
        .enumerate()
    {
        open.push((i, *name, *path, dial(&lab.ns, addr, "data.test", 9300)));
    }
    let during = scrape(&lab);
    assert_eq!(
        value(&during, "astrogate_connections_active", &[]),
        open.len() as f64,
        "{during}"
    );

    // Then all of them move their bytes at full speed, in parallel, while another thread
    // scrapes as fast as it can.
    assert_eq!(open.len(), 12);
    let stop = AtomicBool::new(false);
    let (done, scrapes) = thread::scope(|scope| {
        let scraper = scope.spawn(|| {
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                assert!(value(&scrape(&lab), "astrogate_connections_active", &[]) <= 12.0);
                scrapes += 1;
            }
            scrapes
        });
        let transfers: Vec<_> = open
            .into_iter()
            .map(|(i, name, path, mut s)| {
                scope.spawn(move || {
                    let up = up_len(i);
                    let sent = send_pattern(&mut s, up, up).unwrap();
                    finish(&s);
                    let (n, hash) = hash_to_eof(&mut s).unwrap();
                    assert_eq!(n, down_len(up), "{name}: bytes down");
                    assert!(hash == pattern_hash(up, n), "{name}: bytes down differ");
                    (up, sent, name, path)
                })
            })
            .collect();
        let done: Vec<_> = transfers.into_iter().map(|t| t.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        (done, scraper.join().unwrap())
    });
    eprintln!("{scrapes} scrapes during the transfers");
    assert!(scrapes > 0);
    let received = received.lock().unwrap().clone();
    for (up, sent, name, _) in &done {
        assert!(received.get(up) == Some(sent), "{name}: bytes up differ");
    }

    // Refusals: two denied HTTP clients, one dial for a name with no route.
    for _ in 0..2 {
        let out = lab.client(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Host: data.test",
                "http://127.0.0.1:8084/",
            ],
        );
        assert_eq!(stdout(&out), "403");
    }
    let mut s = lab
        .ns
        .enter(|| TcpStream::connect("127.0.0.1:8081"))
        .unwrap()
        .unwrap();
    s.write_all(b"ASTROGATE-DIAL/1 nowhere.test 80\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("ASTROGATE-DIAL/1 403"), "{reply}");

    let total = done.len() + 3;
    wait_for(
        "every connection to be recorded",
        Duration::from_secs(10),
        || {
            let text = scrape(&lab);
            (value(&text, "astrogate_connections_total", &[]) == total as f64).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape(&lab)));

    let after = scrape(&lab);
    eprintln!("{after}");
    for (name, _, path) in LISTENERS {
        let labels = [
            ("listener", name),
            ("protocol", "dial"),
            ("outcome", "ok"),
            ("path", path),
        ];
        assert_eq!(
            value(&after, "astrogate_connections_total", &labels),
            PER_LISTENER as f64,
            "{name}"
        );
    }
    let denied = [
        ("listener", "closed"),
        ("protocol", "http"),
        ("outcome", "denied"),
    ];
    assert_eq!(value(&after, "astrogate_connections_total", &denied), 2.0);
    let no_route = [
        ("listener", "via-splice"),
        ("outcome", "no_route"),
        ("path", "none"),
    ];
    assert_eq!(value(&after, "astrogate_connections_total", &no_route), 1.0);
    assert_eq!(
        value(&after, "astrogate_refusals_total", &[("reason", "denied")]),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "astrogate_refusals_total",
            &[("reason", "no_route")]
        ),
        1.0
    );
    assert_eq!(value(&after, "astrogate_refusals_total", &[]), 3.0);

    let up: u64 = done.iter().map(|d| d.0).sum();
    let down: u64 = done.iter().map(|d| down_len(d.0)).sum();
    assert_eq!(
        value(&after, "astrogate_bytes_total", &[("direction", "up")]),
        up as f64
    );
    assert_eq!(
        value(&after, "astrogate_bytes_total", &[("direction", "down")]),
        down as f64
    );
    assert_eq!(value(&after, "astrogate_connections_active", &[]), 0.0);
    // Every dial was sniffed, the denied HTTP clients were refused before routing; only the
    // routed ones connected.
    assert_eq!(
        value(&after, "astrogate_sniff_duration_seconds_count", &[]),
        (done.len() + 1) as f64
    );
    assert_eq!(
        value(
            &after,
            "astrogate_upstream_connect_duration_seconds_count",
            &[]
        ),
        done.len() as f64
    );
    // The kernel path moved the kernel listener's bytes, less what it had to copy.
    let kernel_bytes: u64 = done
        .iter()
        .filter(|d| d.3 == "kernel")
        .map(|d| d.0 + down_len(d.0))
        .sum();
    let redirected = value(&after, "astrogate_kernel_path_redirected_bytes_total", &[]);
    let skbs = [("event", "redirected_skbs")];
    assert!(value(&after, "astrogate_kernel_path_events_total", &skbs) > 0.0);
    assert!(
        redirected > 0.0 && redirected <= kernel_bytes as f64,
        "redirected {redirected} of {kernel_bytes}"
    );

    // Only GET /metrics is served.
    assert_eq!(get(&lab, "/", "GET").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        get(&lab, "/metrics", "POST").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    // curl, as any scraper would, gets the same exposition.
    let out = lab.client("curl", &["-sf", "http://127.0.0.1:9100/metrics"]);
    assert!(
        stdout(&out).contains("astrogate_connections_total{"),
        "{out:?}"
    );
}

#[test]
fn reloads_are_counted_by_result() {
    let mut lab = Lab::new("metrics-reload");
    lab.gateway(CONFIG);
    let path = lab.dir.join("astrogate.toml");
    let gateway = lab
        .children
        .iter()
        .find(|c| c.name() == "astrogate")
        .unwrap();
    let reload = |text: &str, expect: &str, n: usize| {
        std::fs::write(&path, text).unwrap();
        gateway.signal(libc::SIGHUP);
        wait_for("the reload to be logged", Duration::from_secs(10), || {
            (lab.gateway_log().matches(expect).count() == n).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.gateway_log()));
    };
    reload(&CONFIG.replace("3s", "4s"), "config reloaded", 1);
    reload(
        "[gateway]\nsniff_timeout = \"soon\"\n",
        "config reload refused",
        1,
    );
    reload("[gateway]\nsniff_timeout = \n", "config reload refused", 2);
    let text = scrape(&lab);
    assert_eq!(
        value(&text, "astrogate_reloads_total", &[("result", "applied")]),
        1.0
    );
    assert_eq!(
        value(&text, "astrogate_reloads_total", &[("result", "refused")]),
        2.0
    );
}
