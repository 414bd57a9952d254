//! The transport benchmark of issue #3, run by `bench/transport.sh`: gRPC through the TCP
//! tunnel, through the QUIC tunnel and direct (no mesh, the baseline), at 0, 1, 5 and 10 %
//! random loss on the wan link. For each: unary latency at a fixed rate, server-stream
//! throughput, and the time a stream takes to recover after a 5-second outage; then, on the
//! clean link, unary calls through a handover of node 1 to a new address. The tables go into
//! BENCHMARKS.md, replacing those of the previous run.
//!
//! A path that cannot be measured (a proxy without QUIC, say) shows its error in its rows;
//! the other rows are still measured. Bounded: about 50 s per row, 12 rows, and 10 s per
//! handover row, 3 rows.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use edgeward_lab::calls::{self, ClientRun, Event, Latencies, RunSpec};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::impair::{Handover, WanLink, HANDOVER_ADDR};
use edgeward_lab::{paths, peer, procs};
use edgeward_lab::{Mesh, MeshOptions, PodSpec, Topology, Transport};

/// Unary calls per row and their rate per second. p99 is then the 15th slowest call: with
/// 600, about 1 % of the calls over TCP at 5 % loss wait for a 200 ms retransmission timeout,
/// and p99 fell on either side of that from one run to the next.
const CALLS: u32 = 1500;
const RATE: f64 = 100.0;
/// The throughput stream: how long it runs and the size of each message.
const THROUGHPUT_TIME: Duration = Duration::from_secs(5);
const MESSAGE_BYTES: u32 = 64 << 10;
/// The recovery stream: one message every `RECOVERY_INTERVAL`, `OUTAGES` outages of
/// `OUTAGE` each. One recovery is a single draw from the retransmission timers' phase, so the
/// row gives the median of three. The stream is stopped once measured; its length only
/// bounds the measurement.
const RECOVERY_STREAM: Duration = Duration::from_secs(120);
const RECOVERY_INTERVAL: Duration = Duration::from_millis(20);
const OUTAGE: Duration = Duration::from_secs(5);
const OUTAGES: usize = 3;
/// Messages that must arrive before the first outage starts.
const BEFORE_OUTAGE: usize = 50;
/// The longest a recovery may take before the row reports an error.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// Pause after a recovery, for the backlog to drain and the timers to settle.
const SETTLE: Duration = Duration::from_secs(2);
/// The handover run: unary calls at `RATE` on one channel, node 1's address moved once
/// `BEFORE_HANDOVER` of them have ended (10 s in all, the move 3 s in).
const HANDOVER_CALLS: u32 = 1000;
const BEFORE_HANDOVER: usize = 300;
/// Loss levels, in per cent.
const LOSS_PERCENT: [u32; 4] = [0, 1, 5, 10];
/// The markers around a section of BENCHMARKS.md: this benchmark's main one, or a named one
/// (`--section NAME`, for a run with other proxy settings, such as another congestion
/// controller).
fn markers(section: Option<&str>) -> (String, String) {
    let name = match section {
        Some(s) => format!("edgeward-bench-transport:{s}"),
        None => "edgeward-bench-transport".to_owned(),
    };
    (
        format!("<!-- {name}: begin -->"),
        format!("<!-- {name}: end -->"),
    )
}

/// The QUIC congestion controller the proxies run with: theirs unless the environment says.
fn congestion() -> String {
    std::env::var("EDGEWARD_QUIC_CONGESTION").unwrap_or_else(|_| "bbr (the default)".into())
}

/// The ways a call can travel from the client pod on node 1 to the server pod on node 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Tcp,
    Quic,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct (no mesh)",
            Path::Tcp => "TCP tunnel",
            Path::Quic => "QUIC tunnel",
        }
    }

    fn parse(name: &str) -> Result<Path> {
        match name {
            "direct" => Ok(Path::Direct),
            "tcp" => Ok(Path::Tcp),
            "quic" => Ok(Path::Quic),
            other => bail!("unknown path {other:?}: use direct, tcp or quic"),
        }
    }
}

/// What the network is built as: a mesh, or the bare network for the direct path.
enum Setup {
    Direct(Topology),
    Mesh(Mesh),
}

impl Setup {
    fn topology(&self) -> &Topology {
        match self {
            Setup::Direct(topo) => topo,
            Setup::Mesh(mesh) => mesh.topology(),
        }
    }

    /// Keeps the logs and state of this path after the run, and says where.
    fn keep_files(&mut self) {
        let topo = match self {
            Setup::Direct(topo) => topo,
            Setup::Mesh(mesh) => mesh.topology_mut(),
        };
        topo.keep_files();
    }
}

/// One row of the table: each figure, or the error that kept it from being measured.
struct Row {
    path: Path,
    loss: u32,
    latency: Result<(Latencies, usize)>,
    throughput: Result<f64>,
    recovery: Result<Vec<f64>>,
}

impl Row {
    fn failed(&self) -> bool {
        self.latency.is_err() || self.throughput.is_err() || self.recovery.is_err()
    }
}

/// One row of the handover table: latency of the successful calls and the failed count.
struct HandoverRow {
    path: Path,
    calls: Result<(Latencies, usize)>,
}

struct Settings {
    paths: Vec<Path>,
    out: PathBuf,
    section: Option<String>,
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("edgeward-bench-transport needs root (namespaces, iptables): run it with");
        eprintln!("  sudo bash bench/transport.sh");
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edgeward-bench-transport: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let settings = parse_args()?;
    let (mut rows, mut handovers) = (Vec::new(), Vec::new());
    for &path in &settings.paths {
        eprintln!("== {}", path.label());
        let (loss_rows, handover) = measure_path(path)?;
        rows.extend(loss_rows);
        handovers.push(handover);
    }
    let name = settings.section.as_deref();
    let section = section(&rows, &handovers, name)?;
    println!("{section}");
    write_section(&settings.out, &section, name)?;
    eprintln!("wrote the table into {}", settings.out.display());
    Ok(())
}

fn parse_args() -> Result<Settings> {
    let mut settings = Settings {
        paths: vec![Path::Direct, Path::Tcp, Path::Quic],
        out: paths::workspace_root().join("BENCHMARKS.md"),
        section: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--paths" => {
                settings.paths = value.split(',').map(Path::parse).collect::<Result<_>>()?
            }
            "--out" => settings.out = PathBuf::from(value),
            "--section" => settings.section = Some(value),
            other => bail!(
                "unknown argument {other}: use --paths direct,tcp,quic --out FILE --section NAME"
            ),
        }
    }
    Ok(settings)
}

/// Every row of one path, and its handover row; if the path cannot be set up, every row
/// carries that error. Only a lab that cannot impair the link stops the run.
fn measure_path(path: Path) -> Result<(Vec<Row>, HandoverRow)> {
    let setup = match set_up(path) {
        Ok(setup) => setup,
        Err(error) => {
            eprintln!("   could not set up: {error:#}");
            let failed = |loss| Row {
                path,
                loss,
                latency: Err(anyhow::anyhow!("{error:#}")),
                throughput: Err(anyhow::anyhow!("(set-up failed)")),
                recovery: Err(anyhow::anyhow!("(set-up failed)")),
            };
            let rows = LOSS_PERCENT.iter().map(|&loss| failed(loss)).collect();
            let calls = Err(anyhow::anyhow!("(set-up failed)"));
            return Ok((rows, HandoverRow { path, calls }));
        }
    };
    let mut setup = setup;
    let wan = WanLink::install(setup.topology())?;
    let rows: Vec<Row> = LOSS_PERCENT
        .iter()
        .map(|&loss| measure_row(&setup, &wan, path, loss))
        .collect::<Result<_>>()?;
    drop(wan);
    let handover = HandoverRow {
        path,
        calls: handover(setup.topology()),
    };
    match &handover.calls {
        Ok((figures, failed)) => eprintln!(
            "   handover: {failed} failed, p99 {:.1} ms, max {:.1} ms",
            figures.p99, figures.max
        ),
        Err(e) => eprintln!("   handover: {e:#}"),
    }
    if rows.iter().any(Row::failed) || handover.calls.is_err() {
        setup.keep_files();
    }
    Ok((rows, handover))
}

fn set_up(path: Path) -> Result<Setup> {
    let options = match path {
        Path::Direct => return direct(),
        Path::Tcp => MeshOptions::new().tcp_tunnel(),
        Path::Quic => MeshOptions::new().transport(Transport::Quic),
    };
    let mesh = greeter::mesh_with_greeter(options)?;
    greeter::check_call(&mesh).context("the first call")?;
    match path {
        Path::Quic => peer::expect_transport(&mesh, Transport::Quic)?,
        _ => peer::expect_transport(&mesh, Transport::Tcp)?,
    }
    Ok(Setup::Mesh(mesh))
}

/// The bare network with the same pods and server, and no edgeward process.
fn direct() -> Result<Setup> {
    let pods = [PodSpec::new(1, CLIENT_POD), PodSpec::new(2, SERVER_POD)];
    let mut topo = Topology::build(&pods)?;
    greeter::start_server(&mut topo, SERVER_POD, GREETER_PORT)?;
    Ok(Setup::Direct(topo))
}

fn measure_row(setup: &Setup, wan: &WanLink, path: Path, loss: u32) -> Result<Row> {
    let topo = setup.topology();
    let impairment = match loss {
        0 => None,
        _ => Some(wan.loss(f64::from(loss) / 100.0)?),
    };
    let row = Row {
        path,
        loss,
        latency: latency(topo),
        throughput: throughput(topo),
        recovery: recovery(topo, wan),
    };
    drop(impairment);
    eprintln!("   {loss:>2} % loss: {}", cells(&row).join(" | "));
    Ok(row)
}

fn target(topo: &Topology) -> Result<std::net::SocketAddrV4> {
    Ok(std::net::SocketAddrV4::new(
        topo.pod(SERVER_POD)?.addr,
        GREETER_PORT,
    ))
}

/// Unary latency figures of the successful calls, and how many calls failed.
fn latency(topo: &Topology) -> Result<(Latencies, usize)> {
    let spec = RunSpec::load(target(topo)?, CALLS, RATE);
    let report = ClientRun::start(topo, CLIENT_POD, spec)?.finish()?;
    let calls = report.calls();
    let failed = calls.iter().filter(|c| !c.ok()).count();
    let figures = Latencies::of(&calls).context("no call succeeded")?;
    Ok((figures, failed + CALLS as usize - calls.len()))
}

/// Unary calls on one channel while node 1 moves to a new address: latency figures of the
/// successful ones, and how many failed. Node 1 moves back when the run is over.
fn handover(topo: &Topology) -> Result<(Latencies, usize)> {
    let spec = RunSpec::load(target(topo)?, HANDOVER_CALLS, RATE);
    let mut run = ClientRun::start(topo, CLIENT_POD, spec)?;
    let what = format!("{BEFORE_HANDOVER} calls before the handover");
    run.wait_for(&what, RECOVERY_LIMIT, |events| {
        let ended = events
            .iter()
            .filter(|e| matches!(e, Event::Call(_)))
            .count();
        (ended >= BEFORE_HANDOVER).then_some(())
    })?;
    let moved = Handover::node1(topo, HANDOVER_ADDR)?;
    let report = run.finish()?;
    drop(moved);
    let calls = report.calls();
    let failed = calls.iter().filter(|c| !c.ok()).count();
    let figures = Latencies::of(&calls).context("no call succeeded")?;
    Ok((figures, failed + HANDOVER_CALLS as usize - calls.len()))
}

/// Server-stream throughput in MiB/s.
fn throughput(topo: &Topology) -> Result<f64> {
    let spec = RunSpec::throughput(target(topo)?, THROUGHPUT_TIME, MESSAGE_BYTES);
    let report = ClientRun::start(topo, CLIENT_POD, spec)?.finish()?;
    let result = report.throughput()?;
    ensure!(
        result.status == "OK",
        "stream failed: {} {}",
        result.status,
        result.details
    );
    Ok(result.bytes as f64 / result.elapsed_s / f64::from(1 << 20))
}

/// Seconds from the end of each outage to the next stream message, sorted.
fn recovery(topo: &Topology, wan: &WanLink) -> Result<Vec<f64>> {
    let spec = RunSpec::stream(target(topo)?, RECOVERY_STREAM, RECOVERY_INTERVAL);
    let mut stream = ClientRun::start(topo, CLIENT_POD, spec)?;
    stream.wait_messages(BEFORE_OUTAGE, RECOVERY_LIMIT)?;
    let mut recoveries = Vec::new();
    for _ in 0..OUTAGES {
        let outage = wan.outage()?;
        std::thread::sleep(OUTAGE);
        outage.lift()?;
        let lifted = calls::now();
        // A stream that failed in the outage ends the client, which ends this wait.
        let next = stream.wait_for("a message after the outage", RECOVERY_LIMIT, |events| {
            let mut arrivals = events.iter().filter_map(|e| match e {
                Event::Message { t, .. } => Some(*t),
                _ => None,
            });
            arrivals.find(|&t| t > lifted)
        })?;
        recoveries.push(next - lifted);
        std::thread::sleep(SETTLE);
    }
    recoveries.sort_by(f64::total_cmp);
    Ok(recoveries)
}

fn cells(row: &Row) -> Vec<String> {
    let error = |e: &anyhow::Error| format!("error: {}", short_error(e));
    let (p50, p99, failed) = match &row.latency {
        Ok((figures, failed)) => (
            format!("{:.1}", figures.p50),
            format!("{:.1}", figures.p99),
            failed.to_string(),
        ),
        Err(e) => (error(e), "–".into(), "–".into()),
    };
    let throughput = row
        .throughput
        .as_ref()
        .map_or_else(error, |v| format!("{v:.1}"));
    let recovery = row
        .recovery
        .as_ref()
        .map_or_else(error, |v| median_and_range(v));
    vec![p50, p99, failed, throughput, recovery]
}

/// An error on one line, short enough for a table cell.
fn short_error(e: &anyhow::Error) -> String {
    let text = format!("{e:#}").replace('|', "/").replace('\n', " ");
    text.chars().take(90).collect()
}

/// "median (min–max)" of sorted `values`.
fn median_and_range(values: &[f64]) -> String {
    match (
        calls::percentile(values, 0.5),
        values.first(),
        values.last(),
    ) {
        (Some(median), Some(min), Some(max)) => format!("{median:.2} ({min:.2}–{max:.2})"),
        _ => "–".to_owned(),
    }
}

/// The markdown section: heading, run details, method, table and the goal check.
fn section(rows: &[Row], handovers: &[HandoverRow], name: Option<&str>) -> Result<String> {
    let (begin, end) = markers(name);
    let heading = match name {
        Some(name) => format!("Tunnel transports under loss: {name}"),
        None => "Tunnel transports under loss (issue #3)".to_owned(),
    };
    let mut text = format!("{begin}\n## {heading}\n\n");
    writeln!(text, "Run {} on {}.", date()?, machine())?;
    writeln!(text, "Binaries: {}.", binaries())?;
    writeln!(text, "QUIC congestion controller: {}.\n", congestion())?;
    text.push_str(METHOD);
    text.push_str(
        "\n| path | loss | unary p50 (ms) | unary p99 (ms) | failed calls | \
         stream (MiB/s) | recovery after a 5 s outage (s), median (range) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for loss in LOSS_PERCENT {
        for row in rows.iter().filter(|r| r.loss == loss) {
            let cells = cells(row).join(" | ");
            writeln!(text, "| {} | {loss} % | {cells} |", row.path.label())?;
        }
    }
    writeln!(text, "\n{}\n", goal(rows))?;
    text.push_str(HANDOVER_METHOD);
    text.push_str(
        "\n| path | calls | failed calls | p50 (ms) | p99 (ms) | max (ms) |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in handovers {
        let cells = match &row.calls {
            Ok((l, failed)) => format!(
                "{HANDOVER_CALLS} | {failed} | {:.1} | {:.1} | {:.1}",
                l.p50, l.p99, l.max
            ),
            Err(e) => format!("{HANDOVER_CALLS} | error: {} | – | – | –", short_error(e)),
        };
        writeln!(text, "| {} | {cells} |", row.path.label())?;
    }
    writeln!(text, "\n{}\n{end}", handover_goal(handovers))?;
    Ok(text)
}

const HANDOVER_METHOD: &str = "\
Handover, on the clean link: the same client makes 1000 unary calls at 100 a second on one
channel; 3 s in, node 1's wan address changes as on a Wi-Fi to 5G handover (198.18.0.11
added, 198.18.0.1 removed, both nodes' routes replaced). Latency of the successful calls.
";

/// The other goal of issue #3: not one failed call through a handover, over QUIC.
fn handover_goal(rows: &[HandoverRow]) -> String {
    let quic = rows.iter().find(|r| r.path == Path::Quic);
    match quic.map(|r| r.calls.as_ref()) {
        Some(Ok((_, failed))) => {
            let verdict = if *failed == 0 { "met" } else { "missed" };
            format!(
                "Goal of issue #3, zero failed calls through a handover (QUIC tunnel): {verdict} \
                 ({failed} failed of {HANDOVER_CALLS})."
            )
        }
        _ => "Goal of issue #3, zero failed calls through a handover: not measured in this run."
            .to_owned(),
    }
}

const METHOD: &str = "\
Method: a Python grpcio client in a pod on node 1 calls a grpcio server in a pod on node 2,
through the node proxies (TCP or QUIC tunnel) or straight across the routed nodes (direct).
Loss: each packet arriving on the wan link is dropped with the given probability, both ways
(iptables statistic match; offloads off, so a packet is a wire packet). Unary: 1500 calls
started at 100 a second whatever earlier ones do, deadline 10 s; p50 and p99 of the successful
ones. Stream: a server stream of 64 KiB messages for 5 s. Recovery: a stream of one message
every 20 ms, the link dark both ways for 5 s, then the time from the end of the outage to
the next message; three outages per row, 2 s apart once the stream is back.
";

/// The goal of issue #3: under 5 % loss, QUIC's p99 at most half of TCP's.
fn goal(rows: &[Row]) -> String {
    let p99 = |path| {
        let row = rows.iter().find(|r| r.path == path && r.loss == 5)?;
        row.latency.as_ref().ok().map(|l| l.0.p99)
    };
    match (p99(Path::Quic), p99(Path::Tcp)) {
        (Some(quic), Some(tcp)) => {
            let verdict = if quic <= tcp / 2.0 { "met" } else { "missed" };
            format!(
                "Goal of issue #3, QUIC's p99 at most half of TCP's under 5 % loss: {verdict} \
                 ({quic:.1} ms against {tcp:.1} ms)."
            )
        }
        _ => "Goal of issue #3, QUIC's p99 at most half of TCP's under 5 % loss: not measured \
              in this run."
            .to_owned(),
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
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim())
        })
        .unwrap_or("unknown CPU")
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

fn binaries() -> String {
    let Ok(bins) = paths::Binaries::locate() else {
        return "not found".to_owned();
    };
    let dir = bins
        .proxy
        .parent()
        .unwrap_or(&bins.proxy)
        .display()
        .to_string();
    if dir.ends_with("release") {
        format!("release build in {dir}")
    } else {
        format!("{dir}, not a release build: figures are slower than a release build's")
    }
}

/// Replaces this benchmark's section of `file` (between the markers), or appends it.
fn write_section(file: &std::path::Path, section: &str, name: Option<&str>) -> Result<()> {
    let (begin, end) = markers(name);
    let old = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from("# Benchmarks\n"),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            let rest = &old[e + end.len()..];
            format!("{}{}{rest}", &old[..b], section.trim_end_matches('\n'))
        }
        _ => format!(
            "{}\n{section}",
            old.trim_end_matches('\n').to_owned() + "\n"
        ),
    };
    std::fs::write(file, new).with_context(|| format!("writing {}", file.display()))
}
