//! TCP proxy for benchmarks: adds a fixed round-trip time between client and
//! upstream and optionally terminates TLS on the client side.

use std::error::Error;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;
/// Chunks queued per direction; far more than 1 Gbit/s needs at 10 ms one way.
const QUEUE_CHUNKS: usize = 4096;
/// Bytes queued per direction: bounds memory whatever the chunk sizes, and
/// still lets ~1.6 GiB/s through at 10 ms one-way delay.
const QUEUE_BYTES: usize = 16 * 1024 * 1024;

pub struct Config {
    pub upstream: SocketAddr,
    /// Full round-trip time; each direction is delayed by half of it.
    pub rtt: Duration,
    /// Client side is TLS when set; upstream is always plain TCP.
    pub tls: Option<TlsAcceptor>,
}

/// Builds a TLS acceptor from PEM files (certificate chain, private key).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Box<dyn Error>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    // Explicit provider: no process-level default is installed, and the
    // workspace already links aws-lc-rs for object_store/reqwest.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections forever, proxying each on its own task.
pub async fn serve(listener: TcpListener, config: Arc<Config>) -> io::Result<()> {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. EMFILE: keep serving the existing connections.
                eprintln!("rtt-proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(client, &config).await {
                eprintln!("rtt-proxy: connection from {peer}: {e}");
            }
        });
    }
}

async fn handle(client: TcpStream, config: &Config) -> io::Result<()> {
    // The kernel completed the client's connect at once; a real link takes
    // one round trip for it, so the client's first bytes wait one RTT more.
    let opened = Instant::now() + config.rtt;
    client.set_nodelay(true)?;
    let upstream = TcpStream::connect(config.upstream).await?;
    upstream.set_nodelay(true)?;
    let delay = config.rtt / 2;
    match &config.tls {
        Some(acceptor) => {
            // The delay is applied to the encrypted bytes, between the
            // client's socket and the TLS endpoint (an in-memory pipe), so
            // that handshakes pay their round trips as on a real link.
            let (near, far) = tokio::io::duplex(CHUNK * 16);
            let wire = relay(client, near, delay, opened);
            let plain = async {
                let tls = acceptor.accept(far).await?;
                relay(tls, upstream, Duration::ZERO, Instant::now()).await
            };
            tokio::try_join!(wire, plain)?;
            Ok(())
        }
        None => relay(client, upstream, delay, opened).await,
    }
}

/// Forwards both directions until both reached EOF; the first error ends
/// the whole connection (dropping, and so closing, both sockets). Nothing
/// from the client is delivered before `opened` + delay.
async fn relay<C, U>(client: C, upstream: U, delay: Duration, opened: Instant) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    let (up_tx, up_rx) = mpsc::channel(QUEUE_CHUNKS);
    let (down_tx, down_rx) = mpsc::channel(QUEUE_CHUNKS);
    tokio::try_join!(
        read_side(client_r, up_tx, delay, opened),
        write_side(upstream_w, up_rx, delay),
        read_side(upstream_r, down_tx, delay, Instant::now()),
        write_side(client_w, down_rx, delay),
    )?;
    Ok(())
}

type Chunk = (Instant, Vec<u8>, OwnedSemaphorePermit);

/// Reads chunks and queues each with its delivery deadline; reading goes on
/// while earlier chunks wait, so latency does not limit bandwidth.
async fn read_side<R: AsyncRead>(
    r: R,
    tx: mpsc::Sender<Chunk>,
    delay: Duration,
    not_before: Instant,
) -> io::Result<()> {
    tokio::pin!(r);
    let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // A TLS peer that closes TCP without close_notify: treat as EOF
            // so data already queued still gets delivered.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        let deadline = Instant::now().max(not_before) + delay;
        let permit = budget
            .clone()
            .acquire_many_owned(n as u32)
            .await
            .map_err(io::Error::other)?;
        // Exact-size copy: queued memory is what the byte budget counts.
        if tx
            .send((deadline, buf[..n].to_vec(), permit))
            .await
            .is_err()
        {
            break; // The writer failed; its error ends the connection.
        }
    }
    Ok(())
}

/// Writes each chunk once its deadline passed, then half-closes (for TLS
/// this sends close_notify before the TCP FIN).
async fn write_side<W: AsyncWrite>(
    w: W,
    mut rx: mpsc::Receiver<Chunk>,
    delay: Duration,
) -> io::Result<()> {
    tokio::pin!(w);
    while let Some((deadline, data, _permit)) = rx.recv().await {
        if !delay.is_zero() || deadline > Instant::now() {
            tokio::time::sleep_until(deadline).await;
        }
        w.write_all(&data).await?;
        // Only TLS buffers; push its records out now, not at the next write.
        w.flush().await?;
    }
    w.shutdown().await
}
