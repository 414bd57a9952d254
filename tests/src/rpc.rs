//! The greeter's SayHello called from Rust inside a pod, each call on a TCP connection of its
//! own: every call is a new connection that the mesh captures, tunnels and authorizes, which
//! is what policy changes and certificate rotation act on. Far cheaper than a Python client
//! run, so a test can open connections back to back and time each one to the millisecond.
//!
//! `CallLoop` keeps calling in the background and records the start, end and outcome of every
//! call, for tests that line calls up with a policy apply or a certificate's expiry.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint;

use crate::greeter::SAY_HELLO;
use crate::netns;

/// Bound on opening the connection of one call (3 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Deadline of one call, connection included (10 s): a stalled path fails the call. Longer
/// than the 5 s a proxy waits for a source workload's SVID before it refuses a connection.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// The longest a `CallLoop` runs whatever its owner does (10 min), so no loop outlives a test.
pub const LOOP_LIMIT: Duration = Duration::from_secs(600);

/// `HelloRequest` of `tests/apps/greeter.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `HelloReply` of `tests/apps/greeter.proto` (the stream filler is never asked for here).
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(int32, tag = "2")]
    index: i32,
    #[prost(string, tag = "3")]
    server: String,
}

/// One call: when it started and ended, and the answering server's name or the error.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Just before the connection was opened.
    pub started: Instant,
    /// When the reply or the error arrived.
    pub ended: Instant,
    /// The server name of the reply, or what went wrong.
    pub outcome: Result<String, String>,
}

impl Attempt {
    /// Whether the call got a reply that echoed its name.
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// From start to end.
    pub fn took(&self) -> Duration {
        self.ended - self.started
    }

    /// The error text, empty for a successful call.
    pub fn error(&self) -> &str {
        self.outcome.as_ref().err().map_or("", String::as_str)
    }
}

/// Makes one call from the network namespace `ns` (a pod's) to `target`, on a new connection.
/// A refused or failed call is an `Attempt` with an error; `Err` means the lab itself failed.
pub fn call(ns: &str, target: SocketAddrV4) -> Result<Attempt> {
    netns::run_in(ns, move || {
        let runtime = runtime()?;
        Ok(runtime.block_on(attempt(target)))
    })
}

/// Makes one call from `ns` to `target` and requires it to succeed; gives the server's name.
pub fn call_ok(ns: &str, target: SocketAddrV4) -> Result<String> {
    let attempt = call(ns, target)?;
    attempt
        .outcome
        .map_err(|e| anyhow!("SayHello from netns {ns} to {target} failed: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Current-thread: every socket is made on this thread, which sits in the pod's namespace.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

async fn attempt(target: SocketAddrV4) -> Attempt {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!("rpc-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let started = Instant::now();
    let outcome = tokio::time::timeout(CALL_DEADLINE, say_hello(target, &name))
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {CALL_DEADLINE:?}")));
    Attempt {
        started,
        ended: Instant::now(),
        outcome,
    }
}

async fn say_hello(target: SocketAddrV4, name: &str) -> Result<String, String> {
    let endpoint = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting: {}", chain(&e)))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| format!("channel not ready: {}", chain(&e)))?;
    let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
    let request = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
    });
    let reply = grpc
        .unary(request, PathAndQuery::from_static(SAY_HELLO), codec)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    if !reply.message.contains(name) {
        return Err(format!(
            "the reply {:?} does not echo {name:?}",
            reply.message
        ));
    }
    Ok(reply.server)
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Calls made back to back from one pod to one target, each on a new connection, until
/// stopped (or `LOOP_LIMIT`); stopped when dropped.
pub struct CallLoop {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl CallLoop {
    /// Starts calling from namespace `ns` to `target`, waiting `gap` between calls.
    pub fn start(ns: &str, target: SocketAddrV4, gap: Duration) -> CallLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (ns, flag, record) = (ns.to_owned(), stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            netns::run_in(&ns, move || {
                let runtime = runtime()?;
                let limit = Instant::now() + LOOP_LIMIT;
                while !flag.load(Ordering::Relaxed) && Instant::now() < limit {
                    let attempt = runtime.block_on(attempt(target));
                    lock(&record).push(attempt);
                    std::thread::sleep(gap);
                }
                Ok(())
            })
        });
        CallLoop {
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    /// Every call that has ended so far, in the order they started.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.attempts).clone()
    }

    /// Stops after the call in flight and gives every call made.
    pub fn stop(mut self) -> Result<Vec<Attempt>> {
        self.halt()?;
        Ok(self.attempts())
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(anyhow!("the call loop thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for CallLoop {
    fn drop(&mut self) {
        if let Err(error) = self.halt() {
            eprintln!("edgeward-lab: call loop: {error:#}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Summary of calls for failure messages: counts and the first few errors with their times
/// relative to `origin` (milliseconds).
pub fn describe(attempts: &[Attempt], origin: Instant) -> String {
    let ok = attempts.iter().filter(|a| a.ok()).count();
    let mut text = format!("{ok} of {} calls succeeded", attempts.len());
    for a in attempts.iter().filter(|a| !a.ok()).take(5) {
        text.push_str(&format!(
            "\n  started at {:+} ms, took {} ms: {}",
            millis_since(origin, a.started),
            a.took().as_millis(),
            a.error()
        ));
    }
    text
}

/// Signed milliseconds from `origin` to `t`.
pub fn millis_since(origin: Instant, t: Instant) -> i64 {
    match t.checked_duration_since(origin) {
        Some(after) => after.as_millis() as i64,
        None => -((origin - t).as_millis() as i64),
    }
}
