//! `cargo xtask demo`: the gateway between a namespace "internet" and a real Yggdrasil network,
//! exercised with real clients in both directions, summed up in a table.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Output,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use astrogate_lab::{
    topology::{GATEWAY_V4, GATEWAY_V6},
    ygglab::*,
    Netns,
};

use crate::util::step;

const LIMIT: Duration = Duration::from_secs(30);

struct Row {
    direction: &'static str,
    protocol: &'static str,
    client: String,
    request: String,
    result: Result<String, String>,
    took: Duration,
}

pub fn run(root: &Path, keep: bool) -> Result<()> {
    astrogate_lab::require_root()?;
    let binary = root.join("target/release/astrogate");
    // Ctrl-C also reaches the lab's processes (same process group); catching it here lets the
    // guards tear the namespaces down instead of leaving them behind.
    let (stop_tx, stop_rx) = mpsc::channel();
    let enter_tx = stop_tx.clone();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    step("bringing up the Yggdrasil lab");
    let lab = YggLab::start(&binary)?;
    print_topology(&lab);

    let rows = exercise(&lab);
    print_table(&rows);
    let failed = rows.iter().filter(|r| r.result.is_err()).count();

    if keep {
        print_poking(&lab);
        // Enter, end of input or Ctrl-C: whichever comes first.
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_line(&mut String::new());
            let _ = enter_tx.send(());
        });
        let _ = stop_rx.recv();
    }
    step("tearing the lab down");
    drop(lab);
    if failed > 0 {
        anyhow::bail!("{failed} demo step(s) failed");
    }
    Ok(())
}

fn print_topology(lab: &YggLab) {
    let t = &lab.topo;
    println!();
    println!(
        "Lab up in {:.2?} (namespaces and yggdrasil nodes routable in {:.2?}):",
        lab.all_up, lab.topology_up
    );
    println!(
        "  {:<28} internet host 192.0.2.2, 2001:db8:1::2 (curl, sendxmpp, go-sendxmpp, astrogate dial; www/secure/echo.inet.example)",
        t.inet.name()
    );
    println!(
        "  {:<28} gateway {GATEWAY_V4}, {GATEWAY_V6}, yggdrasil {}",
        t.gateway.ns.name(),
        t.gateway.address()
    );
    for host in &t.services {
        println!(
            "  {:<28} service host, yggdrasil only: {}",
            host.ns.name(),
            host.address()
        );
    }
    println!(
        "  {:<28} beta also runs astrogate-tunnel: {TUNNELED_HOST} reaches its :{TUNNELED_PORT} on 0.0.0.0/[::]",
        ""
    );
    if let Some(c) = &t.client {
        println!(
            "  {:<28} client host, yggdrasil only: {}",
            c.ns.name(),
            c.address()
        );
    }
    println!();
}

fn exercise(lab: &YggLab) -> Vec<Row> {
    let inet = lab.inet();
    let client = &lab.client().ns;
    let alpha_cert = lab.cert("secure.alpha.example").display().to_string();
    let inet_cert = lab.cert("secure.inet.example").display().to_string();
    let gw_ygg = lab.gateway_ygg();
    let mut rows = Vec::new();
    let mut row = |direction,
                   protocol,
                   client: &str,
                   request: String,
                   f: &dyn Fn() -> Result<String, String>| {
        let started = Instant::now();
        let result = f();
        rows.push(Row {
            direction,
            protocol,
            client: client.to_string(),
            request,
            result,
            took: started.elapsed(),
        });
    };
    const IN: &str = "internet → ygg";
    const OUT: &str = "ygg → internet";

    for fam in ["-4", "-6"] {
        row(
            IN,
            "http",
            &format!("curl {fam}"),
            "http://www.alpha.example/".into(),
            &|| {
                expect_body(
                    curl(lab, inet, &[fam, "http://www.alpha.example/"]),
                    ALPHA_WWW,
                )
            },
        );
    }
    row(
        IN,
        "http",
        "curl -6",
        "http://www.beta.example/".into(),
        &|| {
            expect_body(
                curl(lab, inet, &["-6", "http://www.beta.example/"]),
                BETA_WWW,
            )
        },
    );
    // Tunnel mode: beta's service sits behind its own astrogate-tunnel and reports the source
    // it saw, which must be curl's own address and port.
    for fam in ["-4", "-6"] {
        let url = format!("http://{TUNNELED_HOST}/");
        row(
            IN,
            "tunnel (http)",
            &format!("curl {fam}"),
            url.clone(),
            &|| {
                let o = succeeded(curl(
                    lab,
                    inet,
                    &[fam, "-w", "%{local_ip} %{local_port}", &url],
                )?)?;
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                let (seen, mine) = text.split_once('\n').unwrap_or((&text, ""));
                let (ip, port) = mine.split_once(' ').unwrap_or((mine, ""));
                if seen == format!("src={ip} port={port}") {
                    Ok(format!("the service saw curl's own {ip} port {port}"))
                } else {
                    Err(format!("curl was {mine}; the service saw {seen}"))
                }
            },
        );
    }
    for gw in [GATEWAY_V4.to_string(), format!("[{GATEWAY_V6}]")] {
        let resolve = format!("secure.alpha.example:443:{gw}");
        row(
            IN,
            "tls (SNI)",
            "curl --resolve",
            format!("https://secure.alpha.example/ via {gw}"),
            &|| {
                expect_body(
                    curl(
                        lab,
                        inet,
                        &[
                            "--cacert",
                            &alpha_cert,
                            "--resolve",
                            &resolve,
                            "https://secure.alpha.example/index.html",
                        ],
                    ),
                    ALPHA_TLS,
                )
            },
        );
    }
    row(
        IN,
        "xmpp c2s",
        "sendxmpp",
        format!("alice@chat.alpha.example via {GATEWAY_V4}"),
        &|| {
            let msg = lab
                .dir
                .write("demo-msg-1.txt", "hello from the demo\n")
                .map_err(|e| e.to_string())?;
            let via = format!("{GATEWAY_V4}:{C2S}");
            let (user, pass) = XMPP_USERS[0];
            let o = lab
                .run(
                    inet,
                    LIMIT,
                    "sendxmpp",
                    &[
                        "-j",
                        &via,
                        "-o",
                        "chat.alpha.example",
                        "-u",
                        user,
                        "-p",
                        pass,
                        "-t",
                        "-n",
                        "-m",
                        &msg.display().to_string(),
                        "alice@chat.alpha.example",
                    ],
                )
                .map_err(|e| e.to_string())?;
            succeeded(o).map(|_| "STARTTLS + SASL, message sent".into())
        },
    );
    row(
        IN,
        "xmpp c2s",
        "go-sendxmpp",
        format!("bob@chat.alpha.example via [{GATEWAY_V6}]"),
        &|| {
            let msg = lab
                .dir
                .write("demo-msg-2.txt", "hello from the demo\n")
                .map_err(|e| e.to_string())?;
            let via = format!("[{GATEWAY_V6}]:{C2S}");
            let (user, pass) = XMPP_USERS[1];
            let jid = format!("{user}@chat.alpha.example");
            let o = lab
                .run(
                    inet,
                    LIMIT,
                    "go-sendxmpp",
                    &[
                        "-j",
                        &via,
                        "-u",
                        &jid,
                        "-p",
                        pass,
                        "-n",
                        "--timeout",
                        "10",
                        "-m",
                        &msg.display().to_string(),
                        &jid,
                    ],
                )
                .map_err(|e| e.to_string())?;
            succeeded(o).map(|_| "STARTTLS + SASL, message sent".into())
        },
    );
    row(
        IN,
        "xmpp s2s",
        "stream header",
        format!("to='chat.beta.example' via {GATEWAY_V4}"),
        &|| {
            s2s(
                inet,
                SocketAddr::new(IpAddr::V4(GATEWAY_V4), S2S),
                "chat.beta.example",
            )
        },
    );
    for via in [
        format!("{GATEWAY_V4}:{DIAL}"),
        format!("[{GATEWAY_V6}]:{DIAL}"),
    ] {
        row(
            IN,
            "dial",
            "astrogate dial",
            format!("echo.alpha.example 7 via {via}"),
            &|| dial(lab, inet, "echo.alpha.example", &via),
        );
    }
    let token_url = format!("http://www.alpha.example/.well-known/acme-challenge/{ACME_TOKEN}");
    row(
        IN,
        "acme (proxy)",
        "curl -4",
        "challenge token at www.alpha.example".into(),
        &|| expect_body(curl(lab, inet, &["-4", &token_url]), ACME_KEY_AUTHORIZATION),
    );
    let redirect_url =
        format!("http://redirect.alpha.example/.well-known/acme-challenge/{ACME_TOKEN}");
    row(
        IN,
        "acme (302)",
        "curl -6 -L",
        "token at redirect.alpha.example → acme.alpha.example".into(),
        &|| {
            expect_body(
                curl(lab, inet, &["-6", "-L", &redirect_url]),
                ACME_KEY_AUTHORIZATION,
            )
        },
    );
    row(
        IN,
        "refusal",
        "curl --resolve",
        "http://www.inet.example/ (internet name)".into(),
        &|| {
            let resolve = format!("www.inet.example:80:{GATEWAY_V4}");
            expect_status(
                curl(
                    lab,
                    inet,
                    &[
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--resolve",
                        &resolve,
                        "http://www.inet.example/",
                    ],
                ),
                "421",
            )
        },
    );

    row(
        OUT,
        "http",
        "curl",
        "http://www.inet.example/".into(),
        &|| expect_body(curl(lab, client, &["http://www.inet.example/"]), INET_WWW),
    );
    row(
        OUT,
        "tls (SNI)",
        "curl",
        "https://secure.inet.example/".into(),
        &|| {
            expect_body(
                curl(
                    lab,
                    client,
                    &[
                        "--cacert",
                        &inet_cert,
                        "https://secure.inet.example/index.html",
                    ],
                ),
                INET_TLS,
            )
        },
    );
    let via = format!("[{gw_ygg}]:{DIAL}");
    row(
        OUT,
        "dial",
        "astrogate dial",
        "echo.inet.example 7".into(),
        &|| dial(lab, client, "echo.inet.example", &via),
    );
    row(
        OUT,
        "refusal",
        "curl -H Host:",
        "other.inet.example (not in config)".into(),
        &|| {
            let url = format!("http://[{gw_ygg}]/");
            expect_status(
                curl(
                    lab,
                    client,
                    &[
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-H",
                        "Host: other.inet.example",
                        &url,
                    ],
                ),
                "421",
            )
        },
    );
    row(
        OUT,
        "refusal",
        "astrogate dial",
        "other.inet.example 80".into(),
        &|| {
            let o = lab
                .run(
                    client,
                    LIMIT,
                    &lab_binary(lab),
                    &["dial", "other.inet.example", "80", "--via", &via],
                )
                .map_err(|e| e.to_string())?;
            let stderr = String::from_utf8_lossy(&o.stderr).trim().to_string();
            if !o.status.success() && stderr.contains("403") {
                Ok("refused: dial 403".into())
            } else {
                Err(format!("expected a 403 refusal, got: {stderr}"))
            }
        },
    );
    rows
}

/// The gateway binary doubles as the dial client.
fn lab_binary(lab: &YggLab) -> String {
    lab.binary().display().to_string()
}

fn curl(lab: &YggLab, ns: &Netns, args: &[&str]) -> Result<Output, String> {
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    lab.run(ns, LIMIT, "curl", &all).map_err(|e| e.to_string())
}

fn succeeded(o: Output) -> Result<Output, String> {
    if o.status.success() {
        Ok(o)
    } else {
        let text = String::from_utf8_lossy(&o.stderr).trim().to_string();
        Err(format!(
            "{}: {}",
            o.status,
            text.lines().last().unwrap_or("")
        ))
    }
}

fn expect_body(o: Result<Output, String>, body: &str) -> Result<String, String> {
    let o = succeeded(o?)?;
    let got = String::from_utf8_lossy(&o.stdout);
    if got == body {
        Ok(format!("200 {:?}", body.trim_end()))
    } else {
        Err(format!("unexpected body {got:?}"))
    }
}

fn expect_status(o: Result<Output, String>, code: &str) -> Result<String, String> {
    let o = succeeded(o?)?;
    let got = String::from_utf8_lossy(&o.stdout);
    if got == code {
        Ok(format!("refused: HTTP {code}"))
    } else {
        Err(format!("expected HTTP {code}, got {got}"))
    }
}

fn dial(lab: &YggLab, ns: &Netns, host: &str, via: &str) -> Result<String, String> {
    let text = format!("ping through {via}\n");
    let input = lab
        .dir
        .write("demo-dial.txt", &text)
        .map_err(|e| e.to_string())?;
    let o = lab
        .run_with_input(
            ns,
            LIMIT,
            &lab_binary(lab),
            &["dial", host, "7", "--via", via],
            &input,
        )
        .map_err(|e| e.to_string())?;
    let o = succeeded(o)?;
    if o.stdout == text.as_bytes() {
        Ok("echoed".into())
    } else {
        Err(format!(
            "echo differs: {:?}",
            String::from_utf8_lossy(&o.stdout)
        ))
    }
}

fn s2s(ns: &Netns, gateway: SocketAddr, to: &str) -> Result<String, String> {
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='remote.inet.example' to='{to}' version='1.0'>"
    );
    let reply = ns
        .enter(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&gateway, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(header.as_bytes())?;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && !String::from_utf8_lossy(&got).contains("</stream:features>")
            {
                match s.read(&mut buf)? {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
            Ok(String::from_utf8_lossy(&got).into_owned())
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if reply.contains(&format!("from='{to}'")) || reply.contains(&format!("from=\"{to}\"")) {
        Ok(format!("answered by {to}'s prosody"))
    } else {
        Err(format!("unexpected reply {reply:?}"))
    }
}

fn print_table(rows: &[Row]) {
    let w = |f: &dyn Fn(&Row) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(0).max(min);
    let wd = w(&|r| r.direction.chars().count(), 9);
    let wp = w(&|r| r.protocol.len(), 8);
    let wc = w(&|r| r.client.len(), 6);
    let wr = w(&|r| r.request.len(), 7);
    println!(
        "{:<wd$}  {:<wp$}  {:<wc$}  {:<wr$}  {:>7}  result",
        "direction", "protocol", "client", "request", "time"
    );
    for r in rows {
        let dir_pad = wd - r.direction.chars().count();
        let (mark, text) = match &r.result {
            Ok(t) => ("ok", t.as_str()),
            Err(e) => ("FAIL", e.as_str()),
        };
        println!(
            "{}{}  {:<wp$}  {:<wc$}  {:<wr$}  {:>5}ms  {mark} {text}",
            r.direction,
            " ".repeat(dir_pad),
            r.protocol,
            r.client,
            r.request,
            r.took.as_millis(),
        );
    }
    let ok = rows.iter().filter(|r| r.result.is_ok()).count();
    println!("\n{ok} of {} demo steps worked.", rows.len());
}

fn print_poking(lab: &YggLab) {
    let t = &lab.topo;
    let inet = t.inet.name();
    let gw = t.gateway.ns.name();
    let client = t.client.as_ref().map(|c| c.ns.name()).unwrap_or("?");
    println!(
        r#"
The lab keeps running. Try, as root:
  ip netns exec {inet} curl -v http://www.alpha.example/
  ip netns exec {inet} curl --cacert {cert} https://secure.alpha.example/index.html
  ip netns exec {client} curl -v http://www.inet.example/
  ip netns exec {client} curl -v -H 'Host: other.inet.example' http://[{g}]/
  ip netns exec {inet} curl -v http://{tunneled}/
  ip netns exec {gw} ss -tn
  yggdrasilctl -endpoint=unix://{admin} getPeers
  tail -f {log}
Config: {config}
Press Enter or Ctrl-C to tear it down."#,
        cert = lab.cert("secure.alpha.example").display(),
        g = t.gateway.address(),
        admin = t.gateway.node.admin_socket().display(),
        log = lab.dir.join("astrogate.log").display(),
        config = lab.dir.join("astrogate.toml").display(),
        tunneled = TUNNELED_HOST,
    );
    let _ = std::io::stdout().flush();
}
