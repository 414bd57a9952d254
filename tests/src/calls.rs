//! Long runs of the Python greeter client in a pod, followed while they last: a long server
//! stream with sequence numbers, unary calls at a fixed rate, two calls around a silence, and
//! a throughput stream. The client writes JSON lines with CLOCK_MONOTONIC times (`now` reads
//! the same clock), so a test can line up what the application saw with when it impaired the
//! link.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::time::{clock_gettime, ClockId};
use serde::Deserialize;

use crate::paths;
use crate::procs::{Launch, Proc};
use crate::topology::Topology;
use crate::wait;

/// Time the client gets to start Python, import grpcio and compile the proto (30 s).
const CLIENT_START: Duration = Duration::from_secs(30);

/// Time the client gets after its last deadline to report and exit (15 s).
const CLIENT_WIND_DOWN: Duration = Duration::from_secs(15);

/// Deadline of each unary call unless a run says otherwise (10 s): far above any latency the
/// tests expect, short enough that a hung tunnel shows as DEADLINE_EXCEEDED.
pub const UNARY_DEADLINE: Duration = Duration::from_secs(10);

/// What a stream's deadline adds to its nominal length by default (30 s).
pub const STREAM_DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// Now, in seconds of CLOCK_MONOTONIC, the clock of the client's `t` fields.
pub fn now() -> f64 {
    let time = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is readable");
    time.tv_sec() as f64 + time.tv_nsec() as f64 * 1e-9
}

/// What one client run does.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// One server stream of `duration / interval` messages, one every `interval`.
    Stream {
        /// Nominal length of the stream.
        duration: Duration,
        /// Gap between messages.
        interval: Duration,
    },
    /// `calls` unary calls, started at `rate` calls per second whatever the earlier ones do.
    Load {
        /// Number of calls.
        calls: u32,
        /// Calls per second.
        rate: f64,
    },
    /// A unary call, `silence` of nothing, another unary call on the same channel.
    Idle {
        /// The silence between the two calls.
        silence: Duration,
    },
    /// A stream of `payload_bytes`-sized messages as fast as they come, for `duration`.
    Throughput {
        /// How long to receive.
        duration: Duration,
        /// Filler bytes in each message.
        payload_bytes: u32,
    },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Stream { .. } => "stream",
            Mode::Load { .. } => "load",
            Mode::Idle { .. } => "idle",
            Mode::Throughput { .. } => "throughput",
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Mode::Stream { duration, interval } => vec![
                format!("--duration={}", duration.as_secs_f64()),
                format!("--interval-ms={}", interval.as_millis()),
            ],
            Mode::Load { calls, rate } => {
                vec![format!("--calls={calls}"), format!("--rate={rate}")]
            }
            Mode::Idle { silence } => vec![format!("--idle-s={}", silence.as_secs_f64())],
            Mode::Throughput {
                duration,
                payload_bytes,
            } => vec![
                format!("--duration={}", duration.as_secs_f64()),
                format!("--payload-bytes={payload_bytes}"),
            ],
        }
    }

    /// The time the mode itself takes when nothing goes wrong.
    fn nominal(&self) -> Duration {
        match self {
            Mode::Stream { duration, .. } | Mode::Throughput { duration, .. } => *duration,
            // The client takes at least 0.1 calls per second, as here.
            Mode::Load { calls, rate } => {
                Duration::from_secs_f64(f64::from(*calls) / rate.max(0.1))
            }
            Mode::Idle { silence } => *silence,
        }
    }

    fn default_deadline(&self) -> Duration {
        match self {
            Mode::Stream { duration, .. } | Mode::Throughput { duration, .. } => {
                *duration + STREAM_DEADLINE_SLACK
            }
            Mode::Load { .. } | Mode::Idle { .. } => UNARY_DEADLINE,
        }
    }
}

/// A client run to start: target, the name sent, the mode and the gRPC deadline of each call.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Server address.
    pub target: SocketAddrV4,
    /// Name sent in every request (echoed in every reply).
    pub name: String,
    /// What to do.
    pub mode: Mode,
    /// Deadline of each call (a stream is one call); by default `UNARY_DEADLINE` for unary
    /// calls and the length plus `STREAM_DEADLINE_SLACK` for streams.
    pub deadline: Duration,
}

impl RunSpec {
    /// A run of `mode` against `target`, with the mode's default deadline.
    pub fn new(target: SocketAddrV4, mode: Mode) -> RunSpec {
        RunSpec {
            target,
            name: format!("run-{:08x}", rand::random::<u32>()),
            deadline: mode.default_deadline(),
            mode,
        }
    }

    /// A stream of `duration`, one message every `interval`.
    pub fn stream(target: SocketAddrV4, duration: Duration, interval: Duration) -> RunSpec {
        RunSpec::new(target, Mode::Stream { duration, interval })
    }

    /// `calls` unary calls at `rate` per second.
    pub fn load(target: SocketAddrV4, calls: u32, rate: f64) -> RunSpec {
        RunSpec::new(target, Mode::Load { calls, rate })
    }

    /// Two unary calls `silence` apart on one channel.
    pub fn idle(target: SocketAddrV4, silence: Duration) -> RunSpec {
        RunSpec::new(target, Mode::Idle { silence })
    }

    /// A throughput stream of `payload_bytes` messages for `duration`.
    pub fn throughput(target: SocketAddrV4, duration: Duration, payload_bytes: u32) -> RunSpec {
        let mode = Mode::Throughput {
            duration,
            payload_bytes,
        };
        RunSpec::new(target, mode)
    }

    /// Sets the deadline of each call.
    pub fn deadline(mut self, deadline: Duration) -> RunSpec {
        self.deadline = deadline;
        self
    }

    /// The longest the client process may run before the lab kills it and fails.
    pub fn run_limit(&self) -> Duration {
        let calls_in_a_row = match self.mode {
            Mode::Idle { .. } => 2,
            _ => 1,
        };
        CLIENT_START + self.mode.nominal() + self.deadline * calls_in_a_row + CLIENT_WIND_DOWN
    }
}

/// One line of the client's output.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The client is about to make its first call.
    Start {
        /// Time (CLOCK_MONOTONIC, seconds).
        t: f64,
    },
    /// A stream message arrived.
    Message {
        /// Its sequence number.
        seq: u32,
        /// When it arrived.
        t: f64,
    },
    /// The stream ended, well or not.
    StreamEnd(StreamEnd),
    /// A unary call ended, well or not.
    Call(CallResult),
    /// Every call of a load run ended (or was given up on).
    LoadEnd {
        /// Calls made.
        calls: u32,
        /// Calls that failed.
        failed: u32,
        /// Calls still in flight when the client stopped waiting.
        stuck: u32,
    },
    /// Both calls of an idle run ended.
    IdleEnd {
        /// Calls that failed.
        failed: u32,
    },
    /// A throughput run ended.
    Throughput(ThroughputResult),
    /// The client is done; `ok` when it saw no failure.
    Done {
        /// Whether everything succeeded.
        ok: bool,
        /// When.
        t: f64,
    },
}

/// How a stream ended: what arrived and the final status.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StreamEnd {
    /// Messages asked for.
    pub expected: u32,
    /// Distinct sequence numbers received.
    pub received: u32,
    /// Sequence numbers never received, as [first, last] ranges.
    pub missing: Vec<[u32; 2]>,
    /// Messages received more than once.
    pub duplicates: u32,
    /// Messages that arrived after a higher sequence number.
    pub out_of_order: u32,
    /// gRPC status name ("OK", "UNAVAILABLE", ...).
    pub status: String,
    /// Status details.
    pub details: String,
    /// When the call began.
    pub started: f64,
    /// When it ended.
    pub t: f64,
    /// Seconds from the start of the call to its end.
    pub elapsed_s: f64,
    /// Seconds from the last message (or the start) to the end: how long an error took to
    /// show after the data stopped.
    pub silent_s: f64,
}

impl StreamEnd {
    /// Fails unless the stream ended OK with every message once and in order.
    pub fn check_complete(&self) -> Result<()> {
        ensure!(
            self.status == "OK",
            "the stream failed with {} ({}) after {:.1} s, {:.1} s after its last message; \
             {} of {} messages arrived",
            self.status,
            self.details,
            self.elapsed_s,
            self.silent_s,
            self.received,
            self.expected
        );
        ensure!(
            self.received == self.expected && self.missing.is_empty(),
            "the stream lost messages: {} of {} arrived, missing {:?}",
            self.received,
            self.expected,
            self.missing
        );
        ensure!(
            self.duplicates == 0 && self.out_of_order == 0,
            "the stream delivered {} duplicates and {} messages out of order",
            self.duplicates,
            self.out_of_order
        );
        Ok(())
    }
}

/// How one unary call ended.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CallResult {
    /// Position in the run.
    pub i: u32,
    /// When it began.
    pub start: f64,
    /// When it ended.
    pub t: f64,
    /// Milliseconds from start to end, for a failure the time it took to see it.
    pub latency_ms: f64,
    /// gRPC status name ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", ...).
    pub status: String,
    /// Status details.
    pub details: String,
}

impl CallResult {
    /// Whether the call succeeded.
    pub fn ok(&self) -> bool {
        self.status == "OK"
    }
}

/// What a throughput run received.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ThroughputResult {
    /// Messages received.
    pub messages: u64,
    /// Filler bytes received.
    pub bytes: u64,
    /// Seconds of receiving.
    pub elapsed_s: f64,
    /// "OK" unless the stream failed before the run stopped it.
    pub status: String,
    /// Status details.
    pub details: String,
}

/// A client run in progress, killed if dropped before `finish`.
pub struct ClientRun {
    proc: Proc,
    out: PathBuf,
    spec: RunSpec,
}

impl ClientRun {
    /// Starts the client in pod `pod`; returns at once.
    pub fn start(topo: &Topology, pod: &str, spec: RunSpec) -> Result<ClientRun> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pod = topo.pod(pod)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let stem = format!("client-{}-{}-{n}", pod.name, spec.mode.name());
        let out = topo.path(&format!("{stem}.jsonl"));
        let launch = Launch::new(&pod.ns, &stem, paths::python()?)
            .arg("-u")
            .arg(paths::apps_dir().join("greeter_client.py"))
            .arg(spec.target.to_string())
            .arg(format!("--mode={}", spec.mode.name()))
            .arg(format!("--name={}", spec.name))
            .arg(format!("--timeout={}", spec.deadline.as_secs_f64()))
            .arg(format!("--out={}", out.display()))
            .args(spec.mode.args());
        let proc = Proc::spawn(&launch, topo.dir())?;
        Ok(ClientRun { proc, out, spec })
    }

    /// The run's specification.
    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    /// Every event written so far (a last line still being written is left out).
    pub fn events(&self) -> Result<Vec<Event>> {
        let text = match std::fs::read_to_string(&self.out) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).context(format!("reading {}", self.out.display())),
        };
        parse_events(&text)
    }

    /// Waits until `check` finds what it wants in the events so far; fails when `timeout`
    /// passes or the client exits without it.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Event]) -> Option<T>,
    ) -> Result<T> {
        let result = wait::until(what, timeout, || {
            let events = self.events()?;
            if let Some(found) = check(&events) {
                return Ok(Some(found));
            }
            if let Some(status) = self.proc.exit_status()? {
                // It may have written the awaited line just before exiting.
                if let Some(found) = check(&self.events()?) {
                    return Ok(Some(found));
                }
                bail!("the client exited ({status}) before {what}");
            }
            Ok(None)
        });
        result.map_err(|e| self.proc.with_tail(e))
    }

    /// Waits until `count` stream messages have arrived; gives the time the last one did.
    pub fn wait_messages(&mut self, count: usize, timeout: Duration) -> Result<f64> {
        let what = format!("{count} stream messages");
        self.wait_for(&what, timeout, |events| {
            messages(events).nth(count.checked_sub(1)?).map(|m| m.1)
        })
    }

    /// Waits for the client to exit (within the run limit) and gives its whole output.
    pub fn finish(mut self) -> Result<Report> {
        let limit = self.spec.run_limit();
        let what = format!("the {} client run to end", self.spec.mode.name());
        let proc = &mut self.proc;
        let exited = wait::until(&what, limit, || proc.exit_status());
        exited.map_err(|e| self.proc.with_tail(e))?;
        let events = self.events()?;
        if !events.iter().any(|e| matches!(e, Event::Done { .. })) {
            bail!(self.proc.with_tail(anyhow::anyhow!(
                "the client exited without reporting its result"
            )));
        }
        Ok(Report { events })
    }
}

/// Every event of a finished run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The events, in the order written.
    pub events: Vec<Event>,
}

impl Report {
    /// How the stream ended; fails if the run made no stream.
    pub fn stream(&self) -> Result<&StreamEnd> {
        let end = self.events.iter().find_map(|e| match e {
            Event::StreamEnd(end) => Some(end),
            _ => None,
        });
        end.context("the client reported no stream result")
    }

    /// Stream messages as (sequence number, arrival time), in arrival order.
    pub fn messages(&self) -> Vec<(u32, f64)> {
        messages(&self.events).collect()
    }

    /// The unary calls, in the order they ended.
    pub fn calls(&self) -> Vec<&CallResult> {
        calls(&self.events).collect()
    }

    /// What a throughput run received; fails if the run was not one.
    pub fn throughput(&self) -> Result<&ThroughputResult> {
        let result = self.events.iter().find_map(|e| match e {
            Event::Throughput(result) => Some(result),
            _ => None,
        });
        result.context("the client reported no throughput result")
    }

    /// Fails unless exactly `expected` unary calls ended, every one OK; the message lists the
    /// failures with their status and when they happened.
    pub fn check_calls_ok(&self, expected: usize) -> Result<()> {
        let calls = self.calls();
        let failed: Vec<String> = calls
            .iter()
            .filter(|c| !c.ok())
            .map(|c| {
                format!(
                    "#{} {} after {:.0} ms: {}",
                    c.i, c.status, c.latency_ms, c.details
                )
            })
            .collect();
        ensure!(
            failed.is_empty(),
            "{} of {} calls failed:\n{}",
            failed.len(),
            calls.len(),
            failed.join("\n")
        );
        ensure!(
            calls.len() == expected,
            "{} calls ended, {expected} were made",
            calls.len()
        );
        Ok(())
    }
}

/// Latency figures of the successful calls, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latencies {
    /// Successful calls.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Latencies {
    /// Figures over the successful `calls`; `None` when none succeeded.
    pub fn of(calls: &[&CallResult]) -> Option<Latencies> {
        let mut ms: Vec<f64> = calls
            .iter()
            .filter(|c| c.ok())
            .map(|c| c.latency_ms)
            .collect();
        ms.sort_by(f64::total_cmp);
        Some(Latencies {
            count: ms.len(),
            p50: percentile(&ms, 0.50)?,
            p99: percentile(&ms, 0.99)?,
            max: *ms.last()?,
        })
    }
}

/// The nearest-rank percentile `p` (0 < p <= 1) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

fn messages(events: &[Event]) -> impl Iterator<Item = (u32, f64)> + '_ {
    events.iter().filter_map(|e| match e {
        Event::Message { seq, t } => Some((*seq, *t)),
        _ => None,
    })
}

fn calls(events: &[Event]) -> impl Iterator<Item = &CallResult> {
    events.iter().filter_map(|e| match e {
        Event::Call(call) => Some(call),
        _ => None,
    })
}

fn parse_events(text: &str) -> Result<Vec<Event>> {
    // Only whole lines: the client may be half-way through writing the last one.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("client line {l:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_lines_only() {
        let text = concat!(
            r#"{"event": "start", "mode": "stream", "t": 1.5}"#,
            "\n",
            r#"{"event": "message", "seq": 0, "t": 1.6}"#,
            "\n",
            r#"{"event": "message", "se"#,
        );
        let events = parse_events(text).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1], Event::Message { seq: 0, t: 1.6 });
    }

    #[test]
    fn stream_end_checks_status_gaps_and_order() {
        let line = r#"{"event": "stream_end", "expected": 3, "received": 3, "missing": [],
            "duplicates": 0, "out_of_order": 0, "status": "OK", "details": "",
            "started": 1.0, "t": 2.0, "elapsed_s": 1.0, "silent_s": 0.0}"#;
        let Event::StreamEnd(mut end) = serde_json::from_str(line).unwrap() else {
            panic!("not a stream end");
        };
        end.check_complete().unwrap();
        end.missing = vec![[1, 1]];
        end.received = 2;
        assert!(end
            .check_complete()
            .unwrap_err()
            .to_string()
            .contains("[[1, 1]]"));
        end.status = "UNAVAILABLE".into();
        assert!(end
            .check_complete()
            .unwrap_err()
            .to_string()
            .contains("UNAVAILABLE"));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), Some(100.0));
        assert_eq!(percentile(&values, 0.99), Some(198.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn latencies_leave_failures_out() {
        let call = |i, ms: f64, status: &str| CallResult {
            i,
            start: 0.0,
            t: ms / 1000.0,
            latency_ms: ms,
            status: status.into(),
            details: String::new(),
        };
        let calls = [
            call(0, 5.0, "OK"),
            call(1, 9000.0, "UNAVAILABLE"),
            call(2, 7.0, "OK"),
        ];
        let refs: Vec<&CallResult> = calls.iter().collect();
        let figures = Latencies::of(&refs).unwrap();
        assert_eq!((figures.count, figures.p50, figures.max), (2, 5.0, 7.0));
    }

    #[test]
    fn run_limits_cover_start_calls_and_wind_down() {
        let target = "198.18.2.10:50051".parse().unwrap();
        let stream = RunSpec::stream(target, Duration::from_secs(30), Duration::from_millis(100));
        assert_eq!(stream.deadline, Duration::from_secs(60));
        assert_eq!(stream.run_limit(), Duration::from_secs(30 + 30 + 60 + 15));
        let idle = RunSpec::idle(target, Duration::from_secs(60));
        assert_eq!(idle.run_limit(), Duration::from_secs(30 + 60 + 20 + 15));
    }
}
