use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rtt_proxy::{serve, tls_acceptor, Config};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: rtt-proxy --listen ADDR:PORT --upstream ADDR:PORT --rtt-ms N \
                     [--tls-cert cert.pem --tls-key key.pem] [--ready-file PATH]";

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    rtt_ms: u64,
    tls: Option<(PathBuf, PathBuf)>,
    ready_file: Option<PathBuf>,
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("bad address {s:?}"))
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut rtt_ms) = (None, None, None);
    let (mut cert, mut key, mut ready_file) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(resolve(&value()?)?),
            "--upstream" => upstream = Some(resolve(&value()?)?),
            "--rtt-ms" => rtt_ms = Some(value()?.parse().map_err(|e| format!("--rtt-ms: {e}"))?),
            "--tls-cert" => cert = Some(PathBuf::from(value()?)),
            "--tls-key" => key = Some(PathBuf::from(value()?)),
            "--ready-file" => ready_file = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        rtt_ms: rtt_ms.ok_or("--rtt-ms is required")?,
        tls,
        ready_file,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtt-proxy: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtt-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tls = match &args.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let tls_on = tls.is_some();
    let config = Arc::new(Config {
        upstream: args.upstream,
        rtt: Duration::from_millis(args.rtt_ms),
        tls,
    });
    // Install handlers before announcing readiness, so an early SIGTERM
    // from the benchmark driver still exits cleanly.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = TcpListener::bind(args.listen).await?;
    if let Some(path) = &args.ready_file {
        // Temp name + rename: a reader never sees a partial file.
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        std::fs::write(&tmp, "listening\n")?;
        std::fs::rename(&tmp, path)?;
    }
    eprintln!(
        "rtt-proxy: listening on {}, upstream {}, rtt {} ms, tls {}",
        listener.local_addr()?,
        config.upstream,
        args.rtt_ms,
        if tls_on { "on" } else { "off" }
    );
    tokio::select! {
        r = serve(listener, config) => r?,
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
