//! Byte-exact transport checks with plain Rust peers: a listener made inside one pod, a client
//! socket made inside another. The same checks run over the bare routed network (lab
//! self-test, which proves the checks themselves) and through the mesh (`tests/bytes.rs`).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use ring::digest::{Context as Digest, SHA256};

use crate::netns;
use crate::topology::Topology;
use crate::wait;

/// The port the Rust server listens on in its pod (7000).
pub const PORT: u16 = 7000;
/// Bytes sent in each direction by `bulk_both_ways` (64 MiB).
pub const BULK_SIZE: usize = 64 << 20;
/// Size of one write or read (64 KiB).
const CHUNK: usize = 64 << 10;
/// Deadline for one socket operation (60 s): a stalled tunnel fails the test, not CI.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for the whole bulk transfer (300 s).
const BULK_DEADLINE: Duration = Duration::from_secs(300);
/// How long a reset may take to reach the server (15 s).
const RESET_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the server may wait for the connection to arrive (30 s).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes the client sends first, so the connection is proven end to end before each check.
const PREAMBLE: &[u8; 8] = b"edgeward";

/// A connected pair: the client's socket and the server's accepted one.
pub struct Pair {
    /// Socket made in the client pod.
    pub client: TcpStream,
    /// Socket the server accepted in the server pod.
    pub server: TcpStream,
}

/// Connects pod `client` to a fresh listener in pod `server` on `PORT`, and carries a short
/// preamble across, so the path is known to work end to end.
pub fn connect(topo: &Topology, client: &str, server: &str) -> Result<Pair> {
    let server_pod = topo.pod(server)?;
    let addr = SocketAddr::from((server_pod.addr, PORT));
    let listener = netns::run_in(&server_pod.ns, || Ok(TcpListener::bind(addr)?))?;
    let mut client = netns::run_in(&topo.pod(client)?.ns, || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(10))?)
    })?;
    set_timeouts(&client)?;
    // Sent before accepting: a proxy may open the upstream leg only once data arrives.
    client.write_all(PREAMBLE)?;

    let mut server = accept_within(&listener, ACCEPT_TIMEOUT)?;
    set_timeouts(&server)?;
    let mut preamble = [0u8; PREAMBLE.len()];
    server
        .read_exact(&mut preamble)
        .context("reading the preamble")?;
    ensure!(&preamble == PREAMBLE, "preamble arrived as {preamble:?}");
    Ok(Pair { client, server })
}

fn set_timeouts(stream: &TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(())
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let accepted = wait::until(
        "the connection to reach the server pod",
        timeout,
        || match listener.accept() {
            Ok((stream, _)) => Ok(Some(stream)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        },
    )?;
    accepted.set_nonblocking(false)?;
    Ok(accepted)
}

/// Streams `BULK_SIZE` random bytes each way at once and requires equal SHA-256 at both ends.
pub fn bulk_both_ways(pair: Pair) -> Result<()> {
    let deadline = Instant::now() + BULK_DEADLINE;
    let (up_seed, down_seed) = (rand::random::<u64>(), rand::random::<u64>());

    // Four threads, so both directions stream at once as a bidirectional call would.
    let up_sent = send_random(pair.client.try_clone()?, up_seed, deadline);
    let up_received = receive_all(pair.server.try_clone()?, deadline);
    let down_sent = send_random(pair.server, down_seed, deadline);
    let down_received = receive_all(pair.client, deadline);

    let up = (join(up_sent)?, join(up_received)?);
    let down = (join(down_sent)?, join(down_received)?);
    ensure!(
        up.0 == up.1,
        "client to server: SHA-256 differs (seed {up_seed:#x})"
    );
    ensure!(
        down.0 == down.1,
        "server to client: SHA-256 differs (seed {down_seed:#x})"
    );
    Ok(())
}

type Sha256 = Vec<u8>;

fn join(thread: JoinHandle<Result<Sha256>>) -> Result<Sha256> {
    thread.join().expect("transfer thread panicked")
}

/// Sends `BULK_SIZE` pseudo-random bytes made from `seed`; gives their SHA-256.
fn send_random(mut stream: TcpStream, seed: u64, deadline: Instant) -> JoinHandle<Result<Sha256>> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut digest = Digest::new(&SHA256);
        let mut chunk = vec![0u8; CHUNK];
        for sent in (0..BULK_SIZE).step_by(CHUNK) {
            if Instant::now() > deadline {
                bail!("sending stalled after {sent} bytes");
            }
            rng.fill_bytes(&mut chunk);
            digest.update(&chunk);
            stream
                .write_all(&chunk)
                .with_context(|| format!("writing after {sent} bytes"))?;
        }
        Ok(digest.finish().as_ref().to_vec())
    })
}

/// Reads exactly `BULK_SIZE` bytes; gives their SHA-256.
fn receive_all(mut stream: TcpStream, deadline: Instant) -> JoinHandle<Result<Sha256>> {
    std::thread::spawn(move || {
        let mut digest = Digest::new(&SHA256);
        let mut chunk = vec![0u8; CHUNK];
        let mut received = 0;
        while received < BULK_SIZE {
            if Instant::now() > deadline {
                bail!("receiving stalled after {received} bytes");
            }
            let want = CHUNK.min(BULK_SIZE - received);
            let n = stream
                .read(&mut chunk[..want])
                .with_context(|| format!("at {received}"))?;
            if n == 0 {
                bail!("connection ended after {received} of {BULK_SIZE} bytes");
            }
            digest.update(&chunk[..n]);
            received += n;
        }
        Ok(digest.finish().as_ref().to_vec())
    })
}

/// The client writes a request and shuts down its write side; the server reads to EOF and
/// only then replies; the client must still get the whole reply.
pub fn half_close(pair: Pair) -> Result<()> {
    let Pair {
        mut client,
        mut server,
    } = pair;
    let request = pattern(1 << 20, 7);
    let reply = pattern(4 << 20, 11);

    let expected_reply = reply.clone();
    let server_side = std::thread::spawn(move || -> Result<Vec<u8>> {
        let mut received = Vec::new();
        server
            .read_to_end(&mut received)
            .context("server reading to EOF")?;
        server
            .write_all(&expected_reply)
            .context("server replying after EOF")?;
        Ok(received)
    });

    client.write_all(&request)?;
    client.shutdown(Shutdown::Write)?;
    let mut received_reply = Vec::new();
    client
        .read_to_end(&mut received_reply)
        .context("client reading the reply")?;

    let received_request = server_side.join().expect("server thread panicked")?;
    ensure!(
        received_request == request,
        "request arrived with {} bytes",
        received_request.len()
    );
    ensure!(
        received_reply == reply,
        "reply arrived with {} bytes",
        received_reply.len()
    );
    Ok(())
}

/// `len` bytes of a simple pattern that differs with `salt`.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// The client aborts (SO_LINGER 0, then close): the server must read a connection reset, not
/// a clean end of stream.
pub fn reset(pair: Pair) -> Result<()> {
    let Pair { client, server } = pair;
    abort_and_expect_reset(client, server, "client", "server")
}

/// The server aborts: the client must read a connection reset, not a clean end of stream.
pub fn reset_by_server(pair: Pair) -> Result<()> {
    let Pair { client, server } = pair;
    abort_and_expect_reset(server, client, "server", "client")
}

fn abort_and_expect_reset(
    aborting: TcpStream,
    mut peer: TcpStream,
    who: &str,
    other: &str,
) -> Result<()> {
    socket2::SockRef::from(&aborting).set_linger(Some(Duration::ZERO))?;
    drop(aborting);

    peer.set_read_timeout(Some(RESET_TIMEOUT))?;
    let mut buf = [0u8; 1024];
    match peer.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Ok(0) => bail!("the {who}'s reset reached the {other} as a clean EOF"),
        Ok(n) => bail!("the {other} read {n} unexpected bytes instead of a reset"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("nothing reached the {other} within {RESET_TIMEOUT:?}: the reset was lost")
        }
        Err(e) => bail!(
            "the {other} saw {e} ({:?}), not a connection reset",
            e.kind()
        ),
    }
}
