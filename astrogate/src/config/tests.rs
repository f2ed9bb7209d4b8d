use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

/// Asserts the error names the line, the key and the reason.
fn assert_error(text: &str, line: usize, key: &str, reason: &str) {
    match parse(text) {
        Ok(_) => panic!("accepted invalid config:\n{text}"),
        Err(ConfigError::Invalid {
            file,
            line: l,
            key: k,
            reason: r,
            ..
        }) => {
            assert_eq!(file, "test.toml");
            assert_eq!((l, k.as_str()), (line, key), "reason was: {r}");
            assert!(r.contains(reason), "reason `{r}` lacks `{reason}`");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

const MINIMAL: &str = r#"
[[listener]]
name = "https"
bind = ["127.0.0.1:8443"]
protocols = ["tls"]
"#;

#[test]
fn the_shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/astrogate.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners.len(), 4);
    assert_eq!(config.gateway.sniff_timeout, Duration::from_secs(5));
    assert_eq!(config.gateway.max_sniff_bytes, 16384);
    let https = &config.listeners[0];
    assert_eq!(https.bind.len(), 2);
    assert_eq!(
        https.default.as_ref().unwrap().to_string(),
        "[201:5d78::9]:443"
    );
    let blog = Hostname::parse(b"www.blog.example.com").unwrap();
    let route = config.routes.lookup(&blog, "https").unwrap();
    assert_eq!(route.to.to_string(), "[201:5d78::1]");
    assert_eq!(
        route.acme,
        Some(AcmeAction::Proxy("[201:5d78::1]:80".parse().unwrap()))
    );
    let shell = Hostname::parse(b"shell.example.com").unwrap();
    assert!(config.routes.lookup(&shell, "https").is_none());
    assert!(config.routes.lookup(&shell, "dial").is_some());
}

#[test]
fn defaults_apply() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.gateway, GatewaySettings::default());
    assert_eq!(config.gateway.data_path, DataPath::Auto);
    assert!(config.routes.routes().is_empty());
}

#[test]
fn syntax_errors_carry_the_line() {
    assert_error("[gateway]\nsniff_timeout = \n", 2, "", "");
    assert_error(
        "[gateway]\nsnif_timeout = \"5s\"\n",
        2,
        "",
        "unknown field `snif_timeout`",
    );
    assert_error(
        "[gateway]\nmax_sniff_bytes = \"big\"\n",
        2,
        "",
        "invalid type",
    );
}

#[test]
fn value_errors_name_key_and_reason() {
    assert_error(
        "[gateway]\nsniff_timeout = \"5 parsecs\"\n",
        2,
        "gateway.sniff_timeout",
        "unit",
    );
    assert_error(
        "[gateway]\nsniff_timeout = \"0s\"\n",
        2,
        "gateway.sniff_timeout",
        "zero",
    );
    assert_error(
        "[gateway]\nmax_sniff_bytes = 10\n",
        2,
        "gateway.max_sniff_bytes",
        "between",
    );
    assert_error(
        "[gateway]\ndata_path = \"fast\"\n",
        2,
        "gateway.data_path",
        "expected",
    );
    let bad_bind = MINIMAL.replace("127.0.0.1:8443", "localhost:8443");
    assert_error(&bad_bind, 4, "listener[0].bind", "not \"ip:port\"");
    let bad_proto = MINIMAL.replace("\"tls\"", "\"tls\", \"gopher\"");
    assert_error(
        &bad_proto,
        5,
        "listener[0].protocols",
        "unknown protocol `gopher`",
    );
    let twice = MINIMAL.replace("\"tls\"", "\"tls\", \"tls\"");
    assert_error(&twice, 5, "listener[0].protocols", "twice");
    let bad_default = format!("{MINIMAL}default = \"201:5d78::9\"\n");
    assert_error(&bad_default, 6, "listener[0].default", "brackets");
}

#[test]
fn listener_errors() {
    assert_error("[gateway]\n", 1, "listener", "no [[listener]]");
    let dup = format!("{MINIMAL}{}", MINIMAL.replace("8443", "8444"));
    assert_error(&dup, 8, "listener[1].name", "duplicate listener name");
    let rebind = format!("{MINIMAL}{}", MINIMAL.replace("https", "other"));
    assert_error(&rebind, 9, "listener[1].bind", "bound twice");
}

#[test]
fn route_errors() {
    let route = |body: &str| format!("{MINIMAL}\n[[route]]\n{body}");
    assert_error(
        &route("hosts = [\"a.example\"]\n"),
        7,
        "",
        "missing field `to`",
    );
    assert_error(
        &route("hosts = []\nto = \"[201::1]\"\n"),
        8,
        "route[0].hosts",
        "at least one",
    );
    assert_error(
        &route("hosts = [\"*\"]\nto = \"[201::1]\"\n"),
        8,
        "route[0].hosts",
        "`*`",
    );
    assert_error(
        &route("hosts = [\"a.example\"]\nto = \"[201::1]:99999\"\n"),
        9,
        "route[0].to",
        "port",
    );
    assert_error(
        &route("hosts = [\"a.example\"]\nto = \"[201::1]\"\nacme_redirect = \"http://x.example:8080\"\n"),
        10,
        "route[0].acme_redirect",
        "port 80 or 443",
    );
    assert_error(
        &route("hosts = [\"a.example\"]\nto = \"[201::1]\"\nacme = \"[201::1]:80\"\nacme_redirect = \"http://x.example\"\n"),
        11,
        "route[0].acme_redirect",
        "not both",
    );
    assert_error(
        &route("hosts = [\"a.example\"]\nto = \"[201::1]\"\nlisteners = [\"nope\"]\n"),
        10,
        "route[0].listeners",
        "no listener is named `nope`",
    );
    let two = route("hosts = [\"a.example\"]\nto = \"[201::1]\"\n[[route]]\nhosts = [\"A.example.\"]\nto = \"[201::2]\"\n");
    assert_error(&two, 11, "route[1].hosts", "already in route[0]");
}

#[test]
fn acme_redirect_is_normalised() {
    let text = format!(
        "{MINIMAL}\n[[route]]\nhosts = [\"a.example\"]\nto = \"[201::1]\"\nacme_redirect = \"https://ACME.example:443/\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.routes.routes()[0].acme,
        Some(AcmeAction::Redirect("https://acme.example:443".into()))
    );
}

#[test]
fn error_display_has_file_line_key_reason() {
    let err = parse("[gateway]\nsniff_timeout = \"soon\"\n").unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("test.toml:2:17: gateway.sniff_timeout: "),
        "{shown}"
    );
}

#[test]
fn listeners_inherit_or_override_the_data_path() {
    let text = format!(
        "[gateway]\ndata_path = \"userspace\"\n{MINIMAL}\n[[listener]]\nname = \"ssh\"\nbind = [\"127.0.0.1:2222\"]\nprotocols = [\"dial\"]\ndata_path = \"kernel\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.listeners[0].data_path, DataPath::Userspace);
    assert_eq!(config.listeners[1].data_path, DataPath::Kernel);
    let bad = text.replace("data_path = \"kernel\"", "data_path = \"turbo\"");
    assert_error(&bad, 13, "listener[1].data_path", "expected");
}

#[test]
fn splice_is_a_data_path_with_its_own_pipe_size() {
    let text = format!("[gateway]\ndata_path = \"splice\"\npipe_size = \"256KiB\"\n{MINIMAL}");
    let config = parse(&text).unwrap();
    assert_eq!(config.gateway.data_path, DataPath::Splice);
    assert_eq!(config.gateway.pipe_size, 256 << 10);
    let tiny = text.replace("\"256KiB\"", "100");
    assert_error(&tiny, 3, "gateway.pipe_size", "at least 4096");
    let huge = text.replace("\"256KiB\"", "\"2GiB\"");
    assert_error(&huge, 3, "gateway.pipe_size", "at most 1GiB");
}

#[test]
fn raw_listeners_forward_to_one_target_and_take_no_sniffers() {
    let ok = parse(
        r#"
[[listener]]
name = "ssh"
bind = ["0.0.0.0:22"]
to = "[201:5d78::22]:22"
"#,
    )
    .unwrap();
    assert_eq!(
        ok.listeners[0].to.as_ref().unwrap().to_string(),
        "[201:5d78::22]:22"
    );
    assert!(ok.listeners[0].protocols.is_empty());
    let both = parse(
        "[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:22\"]\nprotocols = [\"tls\"]\nto = \"10.0.0.1:22\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        both.contains("listener[0].protocols: a listener with `to` forwards without sniffing"),
        "{both}"
    );
    let neither = parse("[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:22\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        neither.contains("set `protocols` to sniff, or `to`"),
        "{neither}"
    );
    let default = parse(
        "[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:22\"]\nto = \"10.0.0.1:22\"\ndefault = \"10.0.0.2:22\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(default.contains("listener[0].default"), "{default}");
}

#[test]
fn shutdown_grace_is_a_duration() {
    let c = parse("[gateway]\nshutdown_grace = \"5s\"\n[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:22\"]\nto = \"10.0.0.1:22\"\n").unwrap();
    assert_eq!(c.gateway.shutdown_grace, std::time::Duration::from_secs(5));
    let bad = parse("[gateway]\nshutdown_grace = \"soon\"\n[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:22\"]\nto = \"10.0.0.1:22\"\n")
        .unwrap_err()
        .to_string();
    assert!(bad.contains(":2:18: gateway.shutdown_grace:"), "{bad}");
}

#[test]
fn idle_timeout_defaults_to_ten_minutes_and_zero_disables_it() {
    let raw = "[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:22\"]\nto = \"10.0.0.1:22\"\n";
    let with = |g: &str| parse(&format!("[gateway]\n{g}\n{raw}"));
    assert_eq!(
        with("").unwrap().gateway.idle_timeout,
        Some(Duration::from_secs(600))
    );
    assert_eq!(
        with("idle_timeout = \"90s\"").unwrap().gateway.idle_timeout,
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        with("idle_timeout = \"0s\"").unwrap().gateway.idle_timeout,
        None
    );
    assert_error(
        &format!("[gateway]\nidle_timeout = \"later\"\n{raw}"),
        2,
        "gateway.idle_timeout",
        "",
    );
}

#[test]
fn metrics_bind_is_an_address() {
    let ok = parse(&format!("[metrics]\nbind = \"127.0.0.1:9100\"\n{MINIMAL}")).unwrap();
    assert_eq!(ok.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(parse(MINIMAL).unwrap().metrics, None);
    assert_error(
        &format!("[metrics]\nbind = \"localhost\"\n{MINIMAL}"),
        2,
        "metrics.bind",
        "ip:port",
    );
}

#[test]
fn proxy_protocol_keys() {
    let c = parse(
        r#"
[[listener]]
name = "front"
bind = ["0.0.0.0:443"]
protocols = ["tls"]
proxy_protocol_from = ["10.0.0.0/8", "127.0.0.1/32", "::1"]

[[route]]
hosts = ["a.test"]
to = "10.1.1.1:443"
proxy_protocol = "v2"

[[route]]
hosts = ["b.test"]
to = "10.1.1.2:443"
proxy_protocol = "v1"
"#,
    )
    .unwrap();
    let l = &c.listeners[0];
    assert!(l.expects_proxy_header("10.9.8.7".parse().unwrap()));
    assert!(l.expects_proxy_header("::1".parse().unwrap()));
    assert!(!l.expects_proxy_header("127.0.0.2".parse().unwrap()));
    let versions: Vec<_> = c.routes.routes().iter().map(|r| r.proxy_protocol).collect();
    assert_eq!(versions, [Some(ProxyVersion::V2), Some(ProxyVersion::V1)]);
    assert_error(
        "[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:1\"]\nprotocols = [\"tls\"]\nproxy_protocol_from = [\"10.0.0.0/33\"]\n",
        5,
        "listener[0].proxy_protocol_from",
        "",
    );
    assert_error(
        "[[listener]]\nname = \"x\"\nbind = [\"0.0.0.0:1\"]\nto = \"10.0.0.1:1\"\nproxy_protocol = \"v3\"\n",
        5,
        "listener[0].proxy_protocol",
        "v1",
    );
}

#[test]
fn udp_listeners_and_their_gateway_keys() {
    let c = parse(
        r#"
[gateway]
udp_idle_timeout = "45s"
max_udp_sessions = 500

[[listener]]
name = "dns"
transport = "udp"
bind = ["0.0.0.0:53", "[::]:53"]
to = "[201:5d78::53]:53"

[[listener]]
name = "h3"
transport = "udp"
bind = ["0.0.0.0:443"]
protocols = ["quic"]
default = "[201:5d78::9]:443"

[[listener]]
name = "https"
bind = ["0.0.0.0:443"]
protocols = ["tls"]
"#,
    )
    .unwrap();
    assert_eq!(c.gateway.udp_idle_timeout, Duration::from_secs(45));
    assert_eq!(c.gateway.max_udp_sessions, 500);
    let kinds: Vec<Transport> = c.listeners.iter().map(|l| l.transport).collect();
    assert_eq!(kinds, [Transport::Udp, Transport::Udp, Transport::Tcp]);
    assert_eq!(c.listeners[1].protocols, [Protocol::Quic]);
    let defaults = parse(MINIMAL).unwrap().gateway;
    assert_eq!(defaults.udp_idle_timeout, Duration::from_secs(30));
    assert_eq!(defaults.max_udp_sessions, 10_000);

    let udp = |extra: &str| {
        format!(
            "[[listener]]\nname = \"u\"\ntransport = \"udp\"\nbind = [\"0.0.0.0:53\"]\n{extra}\n"
        )
    };
    assert_error(
        &udp("protocols = [\"tls\"]"),
        5,
        "listener[0].protocols",
        "only `quic`",
    );
    assert_error(
        &udp("to = \"10.0.0.1:53\"\ndata_path = \"splice\""),
        6,
        "listener[0].data_path",
        "\"auto\", \"kernel\" or \"userspace\"",
    );
    for path in ["auto", "kernel", "userspace"] {
        let text = udp(&format!("to = \"10.0.0.1:53\"\ndata_path = \"{path}\""));
        let c = parse(&text).unwrap();
        assert_eq!(c.listeners[0].data_path.to_string(), path);
    }
    assert_error(
        "[[listener]]\nname = \"t\"\nbind = [\"0.0.0.0:443\"]\nprotocols = [\"quic\"]\n",
        4,
        "listener[0].protocols",
        "transport = \"udp\"",
    );
    assert_error(
        "[[listener]]\nname = \"t\"\ntransport = \"sctp\"\nbind = [\"0.0.0.0:443\"]\nto = \"10.0.0.1:1\"\n",
        3,
        "listener[0].transport",
        "\"tcp\" or \"udp\"",
    );
    assert_error(
        &format!(
            "[gateway]\nudp_idle_timeout = \"0s\"\n{}",
            udp("to = \"10.0.0.1:53\"")
        ),
        2,
        "gateway.udp_idle_timeout",
        "at least 100ms",
    );
    // The same address twice on one transport is an error, on two transports it is not.
    assert_error(
        &format!(
            "{}{}",
            udp("to = \"10.0.0.1:53\""),
            udp("to = \"10.0.0.1:53\"").replace("\"u\"", "\"v\"")
        ),
        9,
        "listener[1].bind",
        "udp 0.0.0.0:53 is bound twice",
    );
}

#[test]
fn user_and_workers() {
    let c = parse(&format!(
        "[gateway]\nuser = \"astrogate\"\nworkers = 2\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.gateway.user.as_deref(), Some("astrogate"));
    assert_eq!(c.gateway.workers, 2);
    let d = parse(MINIMAL).unwrap();
    assert_eq!((d.gateway.user, d.gateway.workers), (None, 0));
    let bad = |g: &str| format!("[gateway]\n{g}\n{MINIMAL}");
    assert_error(
        &bad("user = \"no body\""),
        2,
        "gateway.user",
        "not a user name",
    );
    assert_error(
        &bad("workers = -1"),
        2,
        "gateway.workers",
        "between 0 and 1024",
    );
}
