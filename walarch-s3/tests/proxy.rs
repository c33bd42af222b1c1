//! Every request honours the proxy the environment names, the multipart
//! completion (sent by walarch-s3's own client) included, and NO_PROXY.
//! Proxy variables are process-wide: this binary holds one test only.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{make_file, scratch, settings, Seaweed};
use walarch_core::destination::{Destination, Stored};
use walarch_s3::S3Destination;

const SEG: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";

/// A plain HTTP proxy on 127.0.0.1: it records each request line (absolute
/// form, as a client sends to a proxy) and forwards the request to
/// `upstream` (whatever host it names: the test's endpoints exist only
/// behind this proxy), one request per connection (`Connection: close`).
/// A `CONNECT` (https) is tunnelled to `tls_upstream`.
fn http_proxy(upstream: String, tls_upstream: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lines);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { break };
            let (upstream, seen) = (upstream.clone(), Arc::clone(&seen));
            let tls_upstream = tls_upstream.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut head = String::new();
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen.lock().unwrap().push(line.trim_end().to_string());
                if line.starts_with("CONNECT ") {
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap() == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    let mut u = TcpStream::connect(&tls_upstream).unwrap();
                    let mut c2 = c.try_clone().unwrap();
                    c2.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .unwrap();
                    let mut u2 = u.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Both);
                    });
                    let _ = u.write_all(r.buffer());
                    let mut rest = r.into_inner();
                    let _ = std::io::copy(&mut rest, &mut u);
                    let _ = u.shutdown(std::net::Shutdown::Write);
                    return;
                }
                head.push_str(&line);
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if !line.to_ascii_lowercase().starts_with("connection:")
                        && !line.to_ascii_lowercase().starts_with("proxy-connection:")
                    {
                        head.push_str(&line);
                    }
                }
                head.push_str("Connection: close\r\n\r\n");
                let mut u = TcpStream::connect(&upstream).unwrap();
                u.write_all(head.as_bytes()).unwrap();
                let mut u2 = u.try_clone().unwrap();
                let mut c2 = c.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                // What the reader buffered, then the rest of the body.
                let _ = u.write_all(r.buffer());
                let mut rest = r.into_inner();
                let _ = std::io::copy(&mut rest, &mut u);
            });
        }
    });
    (url, lines)
}

fn set(k: &str, v: Option<&str>) {
    match v {
        Some(v) => std::env::set_var(k, v),
        None => std::env::remove_var(k),
    }
}

#[test]
fn every_request_goes_through_the_proxy_unless_no_proxy() {
    let sw = Seaweed::shared();
    let dir = scratch("proxy");
    let (small, large) = (dir.join("small"), dir.join("large"));
    make_file(&small, 200_000, 31);
    make_file(&large, 12 << 20, 32);
    let upstream = sw.endpoint.trim_start_matches("http://").to_string();
    let port = upstream.rsplit(':').next().unwrap().to_string();
    // A store serving a self-signed certificate for the name only the
    // proxy knows, pinned through ca_file: the custom TLS client
    // (tls.rs) behind an HTTPS_PROXY.
    let dir_tls = scratch("proxy-tls");
    let st = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-subj",
            "/CN=walarch-store.invalid",
        ])
        .args(["-addext", "subjectAltName=DNS:walarch-store.invalid"])
        .current_dir(&*dir_tls)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let tls = Seaweed::start(
        "proxy-tls",
        Some((&dir_tls.join("c.pem"), &dir_tls.join("k.pem"))),
    );
    let tls_upstream = tls
        .https_endpoint
        .clone()
        .unwrap()
        .trim_start_matches("https://")
        .to_string();
    let tls_port = tls_upstream.rsplit(':').next().unwrap().to_string();
    let (proxy, lines) = http_proxy(upstream, tls_upstream);
    for k in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        set(k, None);
    }

    // An endpoint whose name does not resolve: only the proxy reaches it,
    // so a request that bypassed the proxy would fail the store. Upper-
    // and lower-case variables alike.
    for (var, prefix) in [("http_proxy", "lower"), ("HTTP_PROXY", "upper")] {
        set(var, Some(&proxy));
        lines.lock().unwrap().clear();
        let mut s = settings(sw, prefix);
        s.endpoint = Some(format!("http://walarch-store.invalid:{port}"));
        s.multipart_threshold = 5 << 20;
        s.part_size = 5 << 20;
        let dest = S3Destination::new(s).unwrap();
        assert!(matches!(
            dest.store_new(SEG, &small).unwrap(),
            Stored::Created { .. }
        ));
        assert!(matches!(
            dest.store_new(SEG2, &large).unwrap(),
            Stored::Created { .. }
        ));
        assert_eq!(dest.store_new(SEG2, &large).unwrap(), Stored::Exists);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut dest.open(SEG2).unwrap().unwrap(), &mut back).unwrap();
        assert!(back == std::fs::read(&large).unwrap());
        let seen = lines.lock().unwrap().clone();
        eprintln!(
            "{var}: {} requests through the proxy:\n{}",
            seen.len(),
            seen.join("\n")
        );
        let base = format!("http://walarch-store.invalid:{port}/wal/{prefix}/{SEG2}");
        let count = |method: &str, query: &str| {
            seen.iter()
                .filter(|l| l.starts_with(&format!("{method} {base}")) && l.contains(query))
                .count()
        };
        assert_eq!(count("POST", "?uploads"), 1, "create");
        assert_eq!(count("PUT", "partNumber="), 3, "parts");
        // The create-only completion: the one walarch-s3 sends itself.
        assert_eq!(count("POST", "uploadId="), 1, "completion");
        assert!(seen.iter().all(|l| l.contains("walarch-store.invalid")));
        set(var, None);
    }

    // https through CONNECT, with the pinned certificate: every request
    // (completion included) in tunnels; the name resolves only there.
    for var in ["https_proxy", "HTTPS_PROXY"] {
        set(var, Some(&proxy));
        lines.lock().unwrap().clear();
        let mut s = settings(&tls, var);
        s.endpoint = Some(format!("https://walarch-store.invalid:{tls_port}"));
        s.ca_file = Some(dir_tls.join("c.pem"));
        s.multipart_threshold = 5 << 20;
        s.part_size = 5 << 20;
        let dest = S3Destination::new(s).unwrap();
        assert!(matches!(
            dest.store_new(SEG2, &large).unwrap(),
            Stored::Created { .. }
        ));
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut dest.open(SEG2).unwrap().unwrap(), &mut back).unwrap();
        assert!(back == std::fs::read(&large).unwrap());
        let seen = lines.lock().unwrap().clone();
        eprintln!("{var}: {seen:?}");
        assert!(!seen.is_empty());
        assert!(
            seen.iter()
                .all(|l| l.starts_with(&format!("CONNECT walarch-store.invalid:{tls_port} "))),
            "{seen:?}"
        );
        set(var, None);
    }

    // NO_PROXY naming the endpoint's host: nothing goes through the proxy.
    // (Without it, the same endpoint does go through: checked first.)
    set("HTTP_PROXY", Some(&proxy));
    for (no_proxy, expect_proxied) in [(None, true), (Some("127.0.0.1"), false)] {
        set("NO_PROXY", no_proxy);
        lines.lock().unwrap().clear();
        let mut s = settings(sw, &format!("noproxy-{expect_proxied}"));
        s.multipart_threshold = 5 << 20;
        s.part_size = 5 << 20;
        let dest = S3Destination::new(s).unwrap();
        dest.store_new(SEG2, &large).unwrap();
        assert!(dest.size(SEG2).unwrap().is_some());
        let n = lines.lock().unwrap().len();
        eprintln!("NO_PROXY={no_proxy:?}: {n} requests through the proxy");
        assert_eq!(n > 0, expect_proxied, "NO_PROXY={no_proxy:?}: {n}");
    }
    set("no_proxy", Some("localhost,127.0.0.1"));
    set("NO_PROXY", None);
    lines.lock().unwrap().clear();
    let dest = S3Destination::new(settings(sw, "noproxy-lower")).unwrap();
    dest.store_new(SEG, &small).unwrap();
    assert_eq!(lines.lock().unwrap().len(), 0, "no_proxy");
    drop(dir);
}
