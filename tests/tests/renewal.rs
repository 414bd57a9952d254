//! Certificate renewal on a short lifetime (issue #4). The control plane issues 60-second
//! SVIDs (`--svid-ttl 60s --max-svid-ttl 60s`) to proxies with a 20-second availability
//! target. Under a steady load of calls, each on a new connection, plus a grpcio client on one
//! long connection, every workload SVID is renewed at least twice with not one failed call.
//! Then the control plane is killed: the current certificates stay in use until their NotAfter,
//! with `certificate_renewal_failing` at 1 meanwhile, and once they have expired new
//! connections fail promptly, each with a named reason in the access log. The tunnel
//! connections made with a replaced SVID are closed once their last stream has ended: after
//! the load, node 1 holds one tunnel, not one per renewal.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use edgeward_lab::calls::{ClientRun, RunSpec};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::metrics::{Counter, Source};
use edgeward_lab::peer::PoolStats;
use edgeward_lab::rpc::{self, Attempt, CallLoop};
use edgeward_lab::{ops, wait};
use edgeward_lab::{Mesh, MeshOptions};

/// Lifetime of every SVID the control plane issues in this test.
const SVID_TTL: &str = "60s";

/// The proxies' availability target.
const AVAILABILITY_TARGET: &str = "20s";

/// The grpcio client's load: calls per second on its one connection, for `LOAD_TIME`.
const LOAD_RATE: f64 = 10.0;
const LOAD_TIME: Duration = Duration::from_secs(60);

/// Renewals of each workload SVID the load phase waits for.
const RENEWALS: usize = 2;

/// Bound on the load phase (150 s): two renewals at half of a 60 s lifetime take about 60 s.
const LOAD_PHASE_LIMIT: Duration = Duration::from_secs(150);

/// How often the test samples the proxies' metrics (500 ms).
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Node 1's `--tunnel-idle-timeout` (20 s): its proxy then sweeps its pool every 5 s.
const TUNNEL_IDLE: &str = "20s";

/// How long after the load the tunnels made with replaced SVIDs may stay open (10 s: two
/// sweeps).
const RETIRE_BOUND: Duration = Duration::from_secs(10);

/// Margin around a NotAfter for the clocks of the test, the proxies and the certificates
/// (whole seconds) to disagree (1 s).
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// How long after the later NotAfter new connections may still succeed before the test fails
/// (40 s): a proxy drops an expired SVID at its next renewal attempt, and the retry backoff is
/// capped at 30 s.
const EXPIRED_BOUND: Duration = Duration::from_secs(40);

/// A failing connection must fail within this (8 s): the proxy waits up to 5 s for a source
/// SVID before it refuses; anything longer is a hang.
const FAILURE_BOUND: Duration = Duration::from_secs(8);

/// A workload SVID the test follows through its proxy's metrics.
struct Watched {
    node: usize,
    pod: &'static str,
    workload: &'static str,
    identity: String,
}

impl Watched {
    fn labels(&self) -> [(&str, &str); 2] {
        [("identity", &self.identity), ("workload", self.workload)]
    }

    /// NotAfter of the SVID in force, Unix seconds.
    fn expiry(&self, mesh: &Mesh) -> Result<f64> {
        let name = "edgeward_certificate_expiry_timestamp_seconds";
        Counter::new(Source::Proxy(self.node), name, &self.labels()).read(mesh)
    }

    /// 1 while its renewal keeps failing.
    fn failing(&self, mesh: &Mesh) -> Result<f64> {
        let name = "edgeward_certificate_renewal_failing";
        Counter::new(Source::Proxy(self.node), name, &self.labels()).read(mesh)
    }

    /// Workload SVIDs its node obtained (each node runs one workload here).
    fn issued(&self, mesh: &Mesh) -> Result<f64> {
        let labels = [("kind", "workload"), ("result", "ok")];
        let name = "edgeward_svid_requests_total";
        Counter::new(Source::Proxy(self.node), name, &labels).read(mesh)
    }
}

#[test]
fn short_lived_svids_renew_under_load_and_expire_cleanly_offline() {
    let options = MeshOptions::new()
        .control_arg("--svid-ttl", SVID_TTL)
        .control_arg("--max-svid-ttl", SVID_TTL)
        .proxy_arg(1, "--availability-target", AVAILABILITY_TARGET)
        .proxy_arg(2, "--availability-target", AVAILABILITY_TARGET)
        .proxy_arg(1, "--tunnel-idle-timeout", TUNNEL_IDLE);
    let mut mesh = greeter::mesh_with_greeter(options).expect("starting the mesh");
    let watched = [CLIENT_POD, SERVER_POD].map(|pod| Watched {
        node: if pod == CLIENT_POD { 1 } else { 2 },
        pod,
        workload: if pod == CLIENT_POD {
            "demo/client"
        } else {
            "demo/greeter"
        },
        identity: mesh.spiffe_id(pod).expect("a meshed pod"),
    });
    renew_under_load(&mesh, &watched).unwrap();
    expire_offline(&mut mesh, &watched).unwrap();
}

/// Calls until each SVID was renewed `RENEWALS` times and the grpcio load is done; not one
/// call may fail.
fn renew_under_load(mesh: &Mesh, watched: &[Watched; 2]) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let client_ns = mesh.pod(CLIENT_POD)?.ns.clone();
    let load_calls = (LOAD_RATE * LOAD_TIME.as_secs_f64()) as u32;
    let load = ClientRun::start(
        mesh.topology(),
        CLIENT_POD,
        RunSpec::load(target, load_calls, LOAD_RATE),
    )?;
    let calls = CallLoop::start(&client_ns, target, Duration::from_millis(50));
    let issued_before = [watched[0].issued(mesh)?, watched[1].issued(mesh)?];
    let mut expiries: [Vec<(f64, Instant)>; 2] = [Vec::new(), Vec::new()];
    let started = Instant::now();
    loop {
        for (seen, w) in expiries.iter_mut().zip(watched) {
            let expiry = w.expiry(mesh)?;
            if seen.last().is_none_or(|last| last.0 != expiry) {
                seen.push((expiry, Instant::now()));
            }
        }
        let renewed = expiries.iter().all(|e| e.len() > RENEWALS);
        if renewed && started.elapsed() >= LOAD_TIME {
            break;
        }
        if started.elapsed() > LOAD_PHASE_LIMIT {
            bail!("not every SVID was renewed {RENEWALS} times in {LOAD_PHASE_LIMIT:?}");
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    let attempts = calls.stop()?;
    let report = load.finish()?;

    let control_log = mesh.control_log()?;
    for ((seen, w), before) in expiries.iter().zip(watched).zip(issued_before) {
        let issued = w.issued(mesh)? - before;
        let gaps = issue_gaps(&control_log, &w.identity);
        let gaps: Vec<String> = gaps.iter().map(|g| format!("{g:.1}")).collect();
        eprintln!(
            "{}: seconds between the SVIDs the control plane issued: [{}]",
            w.pod,
            gaps.join(", ")
        );
        let gaps: Vec<String> = seen
            .windows(2)
            .map(|p| format!("{:.1}", p[1].1.duration_since(p[0].1).as_secs_f64()))
            .collect();
        eprintln!(
            "{}: {} SVIDs issued during the load, NotAfter changed {} times; seconds between \
             the changes seen: [{}]",
            w.pod,
            issued,
            seen.len() - 1,
            gaps.join(", ")
        );
        ensure!(
            issued >= RENEWALS as f64,
            "{}: only {issued} SVIDs issued during the load",
            w.pod
        );
    }
    ensure!(
        attempts.iter().all(Attempt::ok) && attempts.len() > 100,
        "calls on new connections failed while certificates renewed: {}",
        rpc::describe(&attempts, started)
    );
    report.check_calls_ok(load_calls as usize)?;
    eprintln!(
        "load: {} calls on new connections and {load_calls} grpcio calls, none failed",
        attempts.len()
    );
    old_tunnels_close(mesh, &expiries[0])
}

/// After each renewal of the client's SVID, the next connection made node 1 open a new tunnel
/// and retire the old one. One more call makes sure the last renewal was followed by a
/// connection; then every retired tunnel closes and one stays.
fn old_tunnels_close(mesh: &Mesh, client_expiries: &[(f64, Instant)]) -> Result<()> {
    let renewals = (client_expiries.len() - 1) as f64;
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    rpc::call_ok(&mesh.pod(CLIENT_POD)?.ns, target).context("a call after the load")?;
    let what = format!("node 1's tunnels of {renewals} replaced client SVIDs to close");
    let pool = wait::until(&what, RETIRE_BOUND, || {
        let pool = PoolStats::read(mesh, 1)?;
        std::thread::sleep(SAMPLE_EVERY);
        Ok((pool.retired_renewed >= renewals && pool.open <= 1.0).then_some(pool))
    })
    .with_context(|| format!("{:?}", PoolStats::read(mesh, 1)))?;
    eprintln!("node 1's tunnel pool after the load: {pool:?}");
    Ok(())
}

/// One sample of the SVIDs' metrics while the control plane is down.
struct Sample {
    at: Instant,
    expiry: [f64; 2],
    failing: [f64; 2],
}

/// Kills the control plane and follows calls and metrics until both SVIDs have expired and
/// new connections fail.
fn expire_offline(mesh: &mut Mesh, watched: &[Watched; 2]) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    let client_ns = mesh.pod(CLIENT_POD)?.ns.clone();
    let calls = CallLoop::start(&client_ns, target, Duration::from_millis(100));
    ops::kill9_control(mesh)?;
    let killed = Instant::now();

    let mut samples = Vec::new();
    let deadline = loop {
        let sample = Sample {
            at: Instant::now(),
            expiry: [watched[0].expiry(mesh)?, watched[1].expiry(mesh)?],
            failing: [watched[0].failing(mesh)?, watched[1].failing(mesh)?],
        };
        let last_expiry = instant_of(sample.expiry[0].max(sample.expiry[1]));
        samples.push(sample);
        let deadline = last_expiry + EXPIRED_BOUND;
        let recent = calls.attempts();
        let failing_now = recent.len() >= 3 && recent[recent.len() - 3..].iter().all(|a| !a.ok());
        if (Instant::now() > last_expiry && failing_now) || Instant::now() > deadline {
            break deadline;
        }
        std::thread::sleep(SAMPLE_EVERY);
    };
    // The calls in flight end within their deadline; a few more show the failure is lasting.
    std::thread::sleep(Duration::from_secs(2));
    let attempts = calls.stop()?;
    judge_expiry(mesh, watched, &samples, &attempts, killed, deadline)
}

fn judge_expiry(
    mesh: &Mesh,
    watched: &[Watched; 2],
    samples: &[Sample],
    attempts: &[Attempt],
    killed: Instant,
    deadline: Instant,
) -> Result<()> {
    // Nothing can renew while the control plane is away: NotAfter stays put.
    let expiry = samples[0].expiry;
    ensure!(
        samples.iter().all(|s| s.expiry == expiry),
        "an SVID changed with the control plane down"
    );
    let not_after = expiry.map(instant_of);
    for (i, w) in watched.iter().enumerate() {
        let before: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at + CLOCK_MARGIN < not_after[i])
            .collect();
        let first = before.iter().position(|s| s.failing[i] == 1.0);
        let Some(first) = first else {
            bail!(
                "{}: certificate_renewal_failing never read 1 before NotAfter",
                w.pod
            );
        };
        ensure!(
            before[first..].iter().all(|s| s.failing[i] == 1.0),
            "{}: certificate_renewal_failing went back to 0 without a control plane",
            w.pod
        );
        eprintln!(
            "{}: renewal failing {:.1} s after the kill; NotAfter {:.1} s after the kill",
            w.pod,
            before[first].at.duration_since(killed).as_secs_f64(),
            not_after[i].duration_since(killed).as_secs_f64()
        );
    }

    // Until the first NotAfter every call works; after the last one they fail, promptly.
    let first_expiry = not_after[0].min(not_after[1]);
    let last_expiry = not_after[0].max(not_after[1]);
    let valid: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started + CLOCK_MARGIN < first_expiry)
        .collect();
    ensure!(
        valid.iter().all(|a| a.ok()) && valid.len() >= 10,
        "calls failed before the certificates expired: {}",
        rpc::describe(&attempts[..valid.len()], killed)
    );
    let first_failure = attempts.iter().position(|a| !a.ok());
    let Some(first_failure) = first_failure else {
        bail!("new connections still succeed {EXPIRED_BOUND:?} after the SVIDs expired");
    };
    let failed = &attempts[first_failure..];
    ensure!(
        failed.iter().all(|a| !a.ok()),
        "a call succeeded after calls had started failing: {}",
        rpc::describe(failed, killed)
    );
    ensure!(
        failed[0].started <= deadline,
        "new connections still succeeded {:?} after the last NotAfter",
        failed[0].started.duration_since(last_expiry)
    );
    if let Some(slow) = failed.iter().find(|a| a.took() > FAILURE_BOUND) {
        bail!(
            "a connection took {:?} to fail: {}",
            slow.took(),
            slow.error()
        );
    }
    let succeeded_late = attempts[..first_failure]
        .iter()
        .filter(|a| a.started > last_expiry + CLOCK_MARGIN)
        .count();
    eprintln!(
        "first failed call started {:+.1} s from the last NotAfter ({} calls succeeded after \
         it); failures took {}..{} ms; error: {}",
        signed_secs(failed[0].started, last_expiry),
        succeeded_late,
        failed
            .iter()
            .map(|a| a.took().as_millis())
            .min()
            .unwrap_or(0),
        failed
            .iter()
            .map(|a| a.took().as_millis())
            .max()
            .unwrap_or(0),
        failed[0].error()
    );

    // Each refused connection has its reason in node 1's access log.
    let lines = mesh.access_log(1)?;
    let errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("direction=outbound") && l.contains("result=error"))
        .collect();
    ensure!(
        errors.len() >= failed.len().min(3),
        "{} failed calls, {} outbound error lines in node 1's access log",
        failed.len(),
        errors.len()
    );
    let mut reasons: Vec<&str> = errors.iter().filter_map(|l| reason(l)).collect();
    reasons.sort_unstable();
    reasons.dedup();
    ensure!(
        !reasons.is_empty() && !reasons.contains(&"-"),
        "access-log error lines without a reason: {errors:?}"
    );
    eprintln!("reasons in node 1's access log: {reasons:?}");
    Ok(())
}

/// Seconds between the workload SVIDs the control plane logged issuing for `identity`.
fn issue_gaps(control_log: &str, identity: &str) -> Vec<f64> {
    let tag = format!("call=\"SignWorkload\" spiffe_id={identity}");
    let times: Vec<f64> = control_log
        .lines()
        .filter(|l| l.contains("issued an SVID") && l.ends_with(&tag))
        .filter_map(time_of_day)
        .collect();
    // A log line of the next day reads as earlier: add the day back.
    let day = 86_400.0;
    times
        .windows(2)
        .map(|p| (p[1] - p[0] + day) % day)
        .collect()
}

/// Seconds since midnight (UTC) of a log line's leading RFC 3339 timestamp.
fn time_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let mut parts = time.trim_end_matches('Z').split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// The `reason=` field of an access-log line.
fn reason(line: &str) -> Option<&str> {
    let start = line.find(" reason=")? + " reason=".len();
    line[start..].split_whitespace().next()
}

/// The monotonic instant of a Unix time in seconds.
fn instant_of(unix: f64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ahead = unix - now.as_secs_f64();
    if ahead >= 0.0 {
        Instant::now() + Duration::from_secs_f64(ahead)
    } else {
        Instant::now() - Duration::from_secs_f64(-ahead)
    }
}

/// Seconds from `origin` to `t`, signed.
fn signed_secs(t: Instant, origin: Instant) -> f64 {
    rpc::millis_since(origin, t) as f64 / 1000.0
}
