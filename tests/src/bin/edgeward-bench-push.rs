//! The push-latency benchmark of issue #4, run by `bench/push.sh`: how long a policy change
//! takes to reach every subscriber, with 1, 100 and 1,000 of them, and what the control plane
//! spends (memory, CPU) serving 1,000. The table goes into BENCHMARKS.md, replacing only this
//! benchmark's own section.
//!
//! The lab's mesh runs (control plane and two proxies). Each round applies one new policy with
//! `edgewardctl policy apply` and times, from just before edgewardctl is started, the moment
//! each subscriber holds an update carrying that policy. Subscribers are real Subscribe streams
//! over mutual TLS, each on a connection of its own, made in this process with node 1's
//! credential (read from its proxy's state directory) from node 1's network namespace; for one
//! subscriber the real proxy of node 1 is measured as well, from its log line at the moment it
//! puts the state in force. Bounded: `ROUNDS` rounds per row, each waiting at most
//! `ROUND_TIMEOUT`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use edgeward_ca::{tls, CertSlot, PeerPolicy, ServerVerifier, SpiffeVerifier};
use edgeward_lab::mesh::{self, CONTROL_NAME};
use edgeward_lab::metrics::{Counter, Source};
use edgeward_lab::{identity, netns, ops, paths, procs, topology, wait, Mesh, MeshOptions};
use edgeward_proto::v1::registry_client::RegistryClient;
use edgeward_proto::v1::SubscribeRequest;
use nix::sched::{setns, CloneFlags};
use tokio::sync::Semaphore;

/// Rounds (policy applies) per row.
const ROUNDS: usize = 50;

/// Subscriber counts, one row each.
const WATCHERS: [usize; 3] = [1, 100, 1000];

/// The longest one round waits for every subscriber (10 s); one that misses it is counted.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between rounds (200 ms), so each update is pushed on its own.
const ROUND_GAP: Duration = Duration::from_millis(200);

/// Bound on connecting and subscribing every subscriber of a row (180 s).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(180);

/// Subscribers connecting at once (50), below the control plane's accept backlog.
const CONCURRENT_CONNECTS: usize = 50;

/// Open files this process needs for 1,000 connections and the control plane, which
/// inherits the limit (4096).
const MIN_OPEN_FILES: u64 = 4096;

/// The goal of issue #4: p99 under 100 ms at 1,000 subscribers.
const GOAL_MS: f64 = 100.0;

/// The tunnel port node 1's proxy announces (15008); simulated subscribers announce the same
/// address, so that subscribing changes nothing that is served.
const TUNNEL_PORT: u16 = 15008;

/// Markers around this benchmark's section of BENCHMARKS.md.
const BEGIN: &str = "<!-- edgeward-bench-push: begin -->";
const END: &str = "<!-- edgeward-bench-push: end -->";

/// One row of the table.
struct Row {
    label: String,
    /// Milliseconds from just before edgewardctl started to each receipt.
    from_call: Vec<f64>,
    /// Milliseconds from edgewardctl's exit to each receipt (negative: before it exited).
    from_return: Vec<f64>,
    /// How long each `edgewardctl policy apply` took, milliseconds.
    apply: Vec<f64>,
    /// Receipts that did not come within `ROUND_TIMEOUT`.
    missed: usize,
}

/// What the control plane spent on the largest row.
struct Usage {
    watchers: usize,
    rss_idle_kib: u64,
    rss_subscribed_kib: u64,
    rss_peak_kib: u64,
    cpu_subscribe_s: f64,
    cpu_rounds_s: f64,
    rounds: usize,
}

struct Settings {
    watchers: Vec<usize>,
    rounds: usize,
    out: PathBuf,
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("edgeward-bench-push needs root (network namespaces): run it with");
        eprintln!("  sudo bash bench/push.sh");
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edgeward-bench-push: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let settings = parse_args()?;
    check_open_files()?;
    let mesh = Mesh::start(MeshOptions::new())?;
    let result = measure(&mesh, &settings);
    if result.is_err() {
        mesh.print_logs();
    }
    let (rows, usage) = result?;
    let section = section(&rows, usage.as_ref(), &settings)?;
    println!("{section}");
    write_section(&settings.out, &section)?;
    eprintln!("wrote the table into {}", settings.out.display());
    Ok(())
}

fn parse_args() -> Result<Settings> {
    let mut settings = Settings {
        watchers: WATCHERS.to_vec(),
        rounds: ROUNDS,
        out: paths::workspace_root().join("BENCHMARKS.md"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--watchers" => {
                let counts = value.split(',').map(|v| v.trim().parse::<usize>());
                settings.watchers = counts.collect::<Result<_, _>>()?;
                ensure!(
                    settings.watchers.iter().all(|&n| (1..=5000).contains(&n)),
                    "--watchers takes counts of 1 to 5000"
                );
            }
            "--rounds" => {
                settings.rounds = value.parse()?;
                ensure!(
                    (1..=200).contains(&settings.rounds),
                    "--rounds takes 1 to 200"
                );
            }
            "--out" => settings.out = PathBuf::from(value),
            other => bail!("unknown argument {other}: use --watchers, --rounds or --out"),
        }
    }
    Ok(settings)
}

/// Fails unless this process may open `MIN_OPEN_FILES` files.
fn check_open_files() -> Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    ensure!(
        soft >= MIN_OPEN_FILES,
        "the open-file limit is {soft}; 1,000 subscribers need {MIN_OPEN_FILES}: run through \
         bench/push.sh, which raises it (ulimit -n)"
    );
    Ok(())
}

fn measure(mesh: &Mesh, settings: &Settings) -> Result<(Vec<Row>, Option<Usage>)> {
    let mut rows = vec![real_proxy(mesh, settings.rounds)?];
    let largest = settings.watchers.iter().copied().max().unwrap_or(0);
    let mut usage = None;
    for &count in &settings.watchers {
        eprintln!("== {count} simulated subscribers");
        let (row, spent) = simulated(mesh, count, settings.rounds)?;
        if count == largest {
            usage = Some(spent);
        }
        rows.push(row);
    }
    Ok((rows, usage))
}

/// Applies policy `name` (in a namespace nothing uses), timing edgewardctl; gives the run and
/// the wall-clock time just before it started.
fn apply(mesh: &Mesh, name: &str) -> Result<(ops::CtlRun, SystemTime)> {
    let doc = format!(
        "policies:\n  - name: {name}\n    action: allow\n    source: {{namespace: bench}}\n    \
         destination: {{namespace: bench-dst}}\n"
    );
    let wall = SystemTime::now();
    Ok((ops::apply_policy(mesh, &doc)?, wall))
}

/// One subscriber: node 1's real proxy, timed by the log line it writes when it puts the new
/// state in force.
fn real_proxy(mesh: &Mesh, rounds: usize) -> Result<Row> {
    eprintln!("== node 1's proxy");
    let mut row = Row::new("1, node 1's proxy (its log)");
    for round in 0..rounds {
        let (run, wall) = apply(mesh, &format!("bench-proxy-{round}"))?;
        let version = run.version()?;
        let needle = format!("mesh state in force version={version} ");
        let found = wait::until("node 1's proxy to apply the policy", ROUND_TIMEOUT, || {
            let log = mesh.proxy_log(1)?;
            Ok(log.lines().find(|l| l.contains(&needle)).map(str::to_owned))
        });
        let Ok(line) = found else {
            row.missed += 1;
            continue;
        };
        let at = log_time(&line).with_context(|| format!("no timestamp in {line:?}"))?;
        let from_call = at - unix_seconds(wall);
        let took = (run.returned - run.called).as_secs_f64();
        row.record(
            from_call * 1000.0,
            (from_call - took) * 1000.0,
            took * 1000.0,
        );
        std::thread::sleep(ROUND_GAP);
    }
    Ok(row)
}

/// What a subscriber task reports.
enum Event {
    /// The first update arrived: the subscriber is in.
    Subscribed,
    /// An update carried these policies.
    Policies(usize, Vec<String>, Instant),
    /// The stream failed.
    Failed(String),
}

/// `count` simulated subscribers; gives the row and what the control plane spent.
fn simulated(mesh: &Mesh, count: usize, rounds: usize) -> Result<(Row, Usage)> {
    let control = mesh.topology().proc(CONTROL_NAME)?.pid();
    let runtime = runtime_in(mesh.topology().node_ns(1))?;
    let svid = identity::node_credential(mesh, 1)?;
    let td = identity::trust_domain(mesh)?;
    let verifier = SpiffeVerifier::new(identity::bundle(mesh)?, PeerPolicy::Exact(td.control_id()));
    let slot = Arc::new(CertSlot::with(svid.certified_key()));
    let tls = Arc::new(tls::client_config(
        ServerVerifier(verifier),
        Some(slot),
        &[b"h2"],
    ));
    let addr: SocketAddr = mesh::control_endpoint(1).parse()?;
    let announced = format!("{}:{TUNNEL_PORT}", topology::wan_addr(1));
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Semaphore::new(CONCURRENT_CONNECTS));

    let idle = (rss_kib(control)?, cpu_seconds(control)?);
    let started = Instant::now();
    for id in 0..count {
        let (tls, tx, gate) = (tls.clone(), tx.clone(), gate.clone());
        let announced = announced.clone();
        runtime.spawn(async move {
            // Held until the first update, so only so many handshakes run at once.
            let permit = gate.acquire_owned().await.ok();
            let result = match edgeward_proto::channel::connect(addr, tls).await {
                Ok(channel) => subscriber(id, channel, announced, &tx, permit).await,
                Err(error) => Err(error.into()),
            };
            if let Err(error) = result {
                let _ = tx.send(Event::Failed(format!("subscriber {id}: {error:#}")));
            }
        });
    }
    drop(tx);
    subscribed(&rx, count)?;
    // The lab's two proxies hold a stream each besides.
    let streams = Counter::new(Source::Control, "edgeward_control_subscribers", &[]);
    let want = (count + 2) as f64;
    wait::until("every stream counted", SUBSCRIBE_TIMEOUT, || {
        Ok((streams.read(mesh)? >= want).then_some(()))
    })?;
    let subscribed = (rss_kib(control)?, cpu_seconds(control)?);
    eprintln!(
        "{count} subscribed in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut row = Row::new(&format!("{count}, simulated"));
    for round in 0..rounds {
        let name = format!("bench-{count}-{round}");
        let (run, _) = apply(mesh, &name)?;
        collect(&rx, &name, count, &run, &mut row)?;
        std::thread::sleep(ROUND_GAP);
    }
    let after = cpu_seconds(control)?;
    let usage = Usage {
        watchers: count,
        rss_idle_kib: idle.0,
        rss_subscribed_kib: subscribed.0,
        rss_peak_kib: status_kib(control, "VmHWM:")?,
        cpu_subscribe_s: subscribed.1 - idle.1,
        cpu_rounds_s: after - subscribed.1,
        rounds,
    };

    runtime.shutdown_timeout(Duration::from_secs(10));
    wait::until(
        "the subscribers to be gone",
        Duration::from_secs(60),
        || Ok((streams.read(mesh)? <= 2.0).then_some(())),
    )?;
    Ok((row, usage))
}

/// A multi-threaded runtime whose every thread has joined network namespace `ns`, so the
/// sockets its tasks make are there.
fn runtime_in(ns: &str) -> Result<tokio::runtime::Runtime> {
    let file = Arc::new(File::open(netns::path(ns)).with_context(|| format!("netns {ns}"))?);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            setns(&*file, CloneFlags::CLONE_NEWNET).expect("joining node 1's network namespace");
        })
        .build()
        .context("building the subscribers' runtime")
}

/// Waits until `count` subscribers have their first update; fails on the first that fails.
fn subscribed(rx: &mpsc::Receiver<Event>, count: usize) -> Result<()> {
    let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
    let mut ready = 0;
    while ready < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Subscribed) => ready += 1,
            Ok(Event::Failed(error)) => bail!("{error}"),
            Ok(Event::Policies(..)) => {}
            Err(_) => bail!("only {ready} of {count} subscribed in {SUBSCRIBE_TIMEOUT:?}"),
        }
    }
    Ok(())
}

/// Gathers, for one round, the moment each subscriber received policy `name`.
fn collect(
    rx: &mpsc::Receiver<Event>,
    name: &str,
    count: usize,
    run: &ops::CtlRun,
    row: &mut Row,
) -> Result<()> {
    let deadline = run.returned + ROUND_TIMEOUT;
    let mut got: HashMap<usize, Instant> = HashMap::new();
    while got.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Policies(id, names, at)) if names.iter().any(|n| n == name) => {
                got.entry(id).or_insert(at);
            }
            Ok(Event::Failed(error)) => bail!("{error}"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let took = millis(run.called, run.returned);
    for &at in got.values() {
        row.record(millis(run.called, at), millis(run.returned, at), took);
    }
    row.missed += count - got.len();
    Ok(())
}

/// Signed milliseconds from `origin` to `t`.
fn millis(origin: Instant, t: Instant) -> f64 {
    match t.checked_duration_since(origin) {
        Some(after) => after.as_secs_f64() * 1000.0,
        None => -(origin.duration_since(t).as_secs_f64() * 1000.0),
    }
}

/// One Subscribe stream: reports its first update, then the policies of every update, until
/// the runtime shuts down. `permit` is let go with the first update.
async fn subscriber(
    id: usize,
    channel: tonic::transport::Channel,
    announced: String,
    tx: &mpsc::Sender<Event>,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<()> {
    let request = SubscribeRequest {
        tunnel_addresses: vec![announced],
        have_version: 0,
        have_epoch: String::new(),
    };
    let mut stream = RegistryClient::new(channel)
        .subscribe(request)
        .await?
        .into_inner();
    while let Some(update) = stream.message().await? {
        let at = Instant::now();
        if permit.take().is_some() {
            let _ = tx.send(Event::Subscribed);
        }
        let names: Vec<String> = update.policies.into_iter().map(|p| p.name).collect();
        if !names.is_empty() {
            let _ = tx.send(Event::Policies(id, names, at));
        }
    }
    bail!("the control plane ended the stream")
}

impl Row {
    fn new(label: &str) -> Row {
        Row {
            label: label.to_owned(),
            from_call: Vec::new(),
            from_return: Vec::new(),
            apply: Vec::new(),
            missed: 0,
        }
    }

    fn record(&mut self, from_call: f64, from_return: f64, apply: f64) {
        self.from_call.push(from_call);
        self.from_return.push(from_return);
        self.apply.push(apply);
    }
}

/// The `q` quantile (nearest rank) of `values`.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A KiB field (`VmRSS:`, `VmHWM:`) of /proc/<pid>/status.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field));
    let value = line.and_then(|l| l.split_whitespace().nth(1));
    value
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of process `pid`, seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are plain. utime and stime are
    // fields 14 and 15, that is the 12th and 13th after the name.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) / clock_ticks()),
        _ => bail!("unexpected /proc/{pid}/stat: {stat}"),
    }
}

/// Clock ticks per second of /proc times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    let mut cmd = Command::new("getconf");
    cmd.arg("CLK_TCK");
    procs::run_ok(&mut cmd, Duration::from_secs(5))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Unix seconds of a log line's leading RFC 3339 UTC timestamp.
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|v| v.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.split(':').map(|v| v.parse::<f64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let days = days_from_civil(year, month, day) as f64;
    Some(days * 86_400.0 + hour * 3600.0 + minute * 60.0 + second)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Years counted from March, so the leap day ends a year (H. Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The markdown section: heading, run details, method, tables and the goal check.
fn section(rows: &[Row], usage: Option<&Usage>, settings: &Settings) -> Result<String> {
    let mut text = format!("{BEGIN}\n## Policy push latency (issue #4)\n\n");
    writeln!(text, "Run {} on {}.", date()?, machine())?;
    writeln!(text, "Binaries: {}.\n", binaries())?;
    writeln!(text, "{}", method(settings.rounds))?;
    text.push_str(
        "| subscribers | updates timed | p50 (ms) | p99 (ms) | max (ms) | missed | p50 after \
         the apply returned (ms) | apply p50 (ms) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let figure = |values: &[f64], q: f64| quantile(values, q).map_or("–".into(), fmt_ms);
        writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            row.from_call.len(),
            figure(&row.from_call, 0.5),
            figure(&row.from_call, 0.99),
            figure(&row.from_call, 1.0),
            row.missed,
            figure(&row.from_return, 0.5),
            figure(&row.apply, 0.5),
        )?;
    }
    if let Some(usage) = usage {
        text.push('\n');
        text.push_str(&usage_table(usage));
    }
    writeln!(text, "\n{}\n{END}", goal(rows))?;
    Ok(text)
}

fn method(rounds: usize) -> String {
    let text = "\
Method: the lab's control plane and two proxies run as in the end-to-end tests. Each round
applies one new policy with `edgewardctl policy apply -f FILE` (run in node 1's namespace) and
times, from just before edgewardctl is started, the moment each subscriber holds an update
carrying that policy: ROUNDS rounds per row, 200 ms apart. That time includes starting
edgewardctl, its TLS handshake with the admin credential and the control plane's write of
`state.json` (fsync); the column \"after the apply returned\" takes edgewardctl's exit instead
(negative: the update arrived before edgewardctl had exited). Simulated subscribers are
Subscribe streams in this one process, each on a TLS connection of its own, with node 1's
credential, from node 1's namespace, besides the two proxies' own streams; they share the two
cores with the control plane, so their own reading time is in the figures. The first row is
node 1's real proxy, timed by the log line it writes as it puts the new state in force.
";
    text.replace("ROUNDS", &rounds.to_string())
}

fn usage_table(usage: &Usage) -> String {
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let per_round = usage.cpu_rounds_s * 1000.0 / usage.rounds.max(1) as f64;
    format!(
        "Control plane (from /proc) with {} simulated subscribers:\n\n| | |\n|---|---|\n\
         | resident memory before they subscribed | {} |\n\
         | resident memory with all subscribed | {} |\n\
         | peak resident memory of the run so far | {} |\n\
         | CPU time to accept and serve the Subscribe calls | {:.2} s |\n\
         | CPU time per policy apply pushed to all of them | {per_round:.1} ms |\n",
        usage.watchers,
        mib(usage.rss_idle_kib),
        mib(usage.rss_subscribed_kib),
        mib(usage.rss_peak_kib),
        usage.cpu_subscribe_s,
    )
}

fn fmt_ms(value: f64) -> String {
    format!("{value:.1}")
}

/// The goal of issue #4: p99 under 100 ms at 1,000 subscribers.
fn goal(rows: &[Row]) -> String {
    let row = rows.iter().find(|r| r.label.starts_with("1000,"));
    let p99 = row.and_then(|r| quantile(&r.from_call, 0.99));
    match (row, p99) {
        (Some(row), Some(p99)) => {
            let met = p99 < GOAL_MS && row.missed == 0;
            let verdict = if met { "met" } else { "missed" };
            format!(
                "Goal of issue #4, p99 under {GOAL_MS:.0} ms at 1,000 subscribers: {verdict} \
                 ({p99:.1} ms, {} missed).",
                row.missed
            )
        }
        _ => "Goal of issue #4, p99 under 100 ms at 1,000 subscribers: not measured.".to_owned(),
    }
}

fn date() -> Result<String> {
    let mut cmd = Command::new("date");
    cmd.args(["-u", "+%Y-%m-%d %H:%M UTC"]);
    Ok(procs::run_ok(&mut cmd, Duration::from_secs(5))?
        .trim()
        .to_owned())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

fn binaries() -> String {
    let Ok(bins) = paths::Binaries::locate() else {
        return "not found".to_owned();
    };
    let dir = bins
        .control
        .parent()
        .unwrap_or(&bins.control)
        .display()
        .to_string();
    match dir.ends_with("release") {
        true => format!("release build in {dir}"),
        false => format!("{dir}, not a release build: slower than a release build"),
    }
}

/// Replaces this benchmark's section of `file`, between its markers, or appends it; the rest
/// of the file (other benchmarks' sections) is left as it is.
fn write_section(file: &Path, section: &str) -> Result<()> {
    let old = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let section = section.trim_end_matches('\n');
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{section}{}", &old[..begin], &old[end + END.len()..])
        }
        _ => format!("{}\n\n{section}\n", old.trim_end_matches('\n')),
    };
    std::fs::write(file, new).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_unix_seconds() {
        let line = "2026-12-03T19:01:44.250000Z  INFO edgeward_proxy::watch: mesh state in force";
        assert_eq!(log_time(line), Some(1_796_324_504.25));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(50.0));
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&values, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_section_replaces_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("BENCHMARKS.md");
        let other = "<!-- other: begin -->\nother\n<!-- other: end -->";
        std::fs::write(&file, format!("# Benchmarks\n\n{other}\n")).unwrap();
        write_section(&file, &format!("{BEGIN}\nfirst\n{END}\n")).unwrap();
        write_section(&file, &format!("{BEGIN}\nsecond\n{END}\n")).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(other) && text.contains("second") && !text.contains("first"));
    }
}
