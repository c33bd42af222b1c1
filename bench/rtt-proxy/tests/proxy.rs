use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtt_proxy::{serve, tls_acceptor, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Upstream that echoes every connection until EOF, then half-closes.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn start_proxy(upstream: SocketAddr, rtt_ms: u64, tls: Option<TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        upstream,
        rtt: Duration::from_millis(rtt_ms),
        tls,
    };
    tokio::spawn(serve(listener, Arc::new(config)));
    addr
}

/// Deterministic, non-repeating-looking test data.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `data` through the proxy to the echo upstream, half-closes, and
/// returns everything echoed back.
async fn echo_through(proxy: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let s = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_rtt_delay_and_integrity() {
    let proxy = start_proxy(echo_upstream().await, 40, None).await;
    let mut t = Instant::now();
    let mut s = TcpStream::connect(proxy).await.unwrap();
    for i in 0..3 {
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        let rt = t.elapsed();
        assert_eq!(&buf, b"ping");
        // The first exchange also pays the connection's round trip.
        let least = if i == 0 { 80 } else { 40 };
        assert!(rt >= Duration::from_millis(least), "round trip {i}: {rt:?}");
        assert!(
            rt < Duration::from_millis(240),
            "round trip {rt:?} too slow"
        );
        t = Instant::now();
    }
    let data = pattern(8 << 20);
    assert!(echo_through(proxy, data.clone()).await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_64mib_both_ways() {
    let proxy = start_proxy(echo_upstream().await, 0, None).await;
    let data = pattern(64 << 20);
    assert!(echo_through(proxy, data.clone()).await == data);
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminates_for_curl() {
    let dir = TempDir(std::env::temp_dir().join(format!("rtt-proxy-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (cert, key) = (dir.0.join("c.pem"), dir.0.join("k.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    // Tiny HTTP responder: one fixed response per connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "EOF before end of request headers");
                    req.extend_from_slice(&buf[..n]);
                }
                let body = "hello through tls\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });

    let proxy = start_proxy(upstream, 20, Some(tls_acceptor(&cert, &key).unwrap())).await;
    let url = format!("https://127.0.0.1:{}/", proxy.port());
    // Default (TLS 1.3) and TLS 1.2, which older OpenSSL clients may pick.
    for extra in [&[][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
        let (cert, url) = (cert.clone(), url.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--max-time", "10", "--cacert"])
                .arg(&cert)
                .args(extra)
                .arg(&url)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {extra:?} failed: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello through tls\n");
    }
}

#[test]
fn bad_arguments_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_rtt-proxy"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}

#[test]
fn ready_file_and_sigterm() {
    let dir = TempDir(std::env::temp_dir().join(format!("rtt-proxy-ready-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let ready = dir.0.join("ready");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtt-proxy"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
            "--rtt-ms",
            "0",
            "--ready-file",
        ])
        .arg(&ready)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "no ready file after 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read_to_string(&ready).unwrap(), "listening\n");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());
}
