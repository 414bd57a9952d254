//! Crash safety (issue #4): while a writer applies and deletes policies and adds and removes
//! workloads in a loop (each change is a write of the control plane's `state.json`, and a
//! write of each proxy's `mesh.pb`, and, for a workload added on a node, of its key and
//! certificate), the control plane and the proxies are killed with SIGKILL, 20 times in all,
//! sometimes the control plane and a proxy together. 2,000 policies applied first make every
//! write hundreds of KiB. Half the kills come at a random moment of a command; the other half
//! the instant the process to kill is seen with the temporary file of an atomic write open, so
//! that a good share of the kills provably lands in the middle of a write (the temporary file
//! stays behind) and the test fails if too few do.
//!
//! Every restart must load a consistent state: the control plane starts and holds every change
//! it acknowledged (and none it acknowledged undoing); a proxy starts without a corrupt or
//! unusable cache, from that cache, and becomes ready. At the end both proxies hold what the
//! control plane serves and gRPC still crosses the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::metrics::{Counter, Source};
use edgeward_lab::ops::{self, ApiWorkload, Ctl, Held};
use edgeward_lab::{mesh, rpc, Mesh, MeshOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Kills in all.
const KILLS: usize = 20;

/// How long the writer runs before each kill: a random time in this range (ms).
const BEFORE_KILL_MS: std::ops::Range<u64> = 300..1500;

/// Then, how far into the next command the kill comes: a random time in this range (ms),
/// about as long as one edgewardctl command takes from start to exit.
const INTO_COMMAND_MS: std::ops::Range<u64> = 0..60;

/// The longest a kill waits to see a write under way (5 s).
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// The longest the writer may go without starting a command (10 s).
const NEXT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Policies applied before the kills begin (2,000), so that `state.json` and `mesh.pb` are
/// hundreds of KiB and every write of them takes a while to make and sync.
const PRELOADED: usize = 2000;

/// How long a proxy may take to be ready again after a restart (30 s).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the proxies may take to hold what the control plane serves at the end (60 s):
/// their reconnection backoff grows with every kill of the control plane, up to 30 s.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on the whole kill loop (5 min).
const LOOP_LIMIT: Duration = Duration::from_secs(300);

/// Pause between two writes (20 ms), which also lets a check take the writer's gate.
const WRITE_GAP: Duration = Duration::from_millis(20);

/// What a proxy logs once it serves from its cached mesh state.
const CACHE_LOADED: &str = "serving from the cached mesh state";

/// Log text that says a restart did not load a consistent state.
const INCONSISTENT: [&str; 3] = ["corrupt", "unusable", "refused a mesh state"];

/// What one kill round kills.
#[derive(Clone, Copy, Debug)]
enum Target {
    Control,
    Proxy(usize),
    ControlAndProxy(usize),
}

/// What the writer knows of each object: acknowledged present, acknowledged absent, or
/// unknown (a command that failed, perhaps after the control plane committed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Present,
    Absent,
    Unknown,
}

/// The writer's record, by object ("policy/<name>" or "workload/<namespace>/<name>").
type Ledger = BTreeMap<String, Known>;

/// The writing thread. A check holds `gate` so that no command is in flight while it reads.
struct Writer {
    gate: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    /// Commands started so far, counted just before each edgewardctl starts.
    issued: Arc<AtomicU64>,
    thread: Option<JoinHandle<usize>>,
}

impl Writer {
    fn start(ctl: Ctl) -> Writer {
        let gate = Arc::new(Mutex::new(Ledger::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let (ledger, flag, count) = (gate.clone(), stop.clone(), issued.clone());
        let thread = std::thread::spawn(move || write_loop(&ctl, &ledger, &flag, &count));
        Writer {
            gate,
            stop,
            issued,
            thread: Some(thread),
        }
    }

    /// Waits until the writer starts its next command, so that a kill a few milliseconds
    /// later lands while the change is being made and written.
    fn next_command(&self) -> Result<()> {
        let seen = self.issued.load(Ordering::SeqCst);
        let deadline = Instant::now() + NEXT_COMMAND_TIMEOUT;
        while self.issued.load(Ordering::SeqCst) == seen {
            if Instant::now() > deadline {
                bail!("the writer started no command in {NEXT_COMMAND_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The ledger, with the writer held still until the guard drops.
    fn hold(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the writer; gives how many commands it ran.
    fn stop(mut self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        thread.join().map_err(|_| anyhow!("the writer panicked"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Applies policy p-n and adds workload w-n, and undoes the ones of three steps back, until
/// stopped (or `LOOP_LIMIT`); gives the number of commands run.
fn write_loop(ctl: &Ctl, ledger: &Mutex<Ledger>, stop: &AtomicBool, issued: &AtomicU64) -> usize {
    let started = Instant::now();
    let mut commands = 0;
    for n in 0usize.. {
        if stop.load(Ordering::Relaxed) || started.elapsed() > LOOP_LIMIT {
            break;
        }
        let policy = format!("p-{n}");
        let doc = format!(
            "policies:\n  - name: {policy}\n    action: allow\n    source: {{namespace: \
             crash-src}}\n    destination: {{namespace: crash-dst, ports: [{}]}}\n",
            1000 + n % 60000
        );
        let workload = crash_workload(n);
        let mut steps: Vec<(String, Vec<String>, Known)> = vec![
            (
                format!("policy/{policy}"),
                vec!["policy".into(), "apply".into(), "-f".into(), "-".into()],
                Known::Present,
            ),
            (
                format!("workload/{}", workload.key()),
                workload.add_args(),
                Known::Present,
            ),
        ];
        if let Some(old) = n.checked_sub(3) {
            let old_policy = format!("p-{old}");
            let old_workload = crash_workload(old).key();
            steps.push((
                format!("policy/{old_policy}"),
                vec!["policy".into(), "delete".into(), old_policy],
                Known::Absent,
            ));
            steps.push((
                format!("workload/{old_workload}"),
                vec!["workload".into(), "remove".into(), old_workload],
                Known::Absent,
            ));
        }
        for (object, args, on_success) in steps {
            let mut held = ledger.lock().unwrap_or_else(|e| e.into_inner());
            held.insert(object.clone(), Known::Unknown);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let input = (args[1] == "apply").then_some(doc.as_str());
            let ok = run_with_input(ctl, &args, input, issued);
            held.insert(object, if ok { on_success } else { Known::Unknown });
            drop(held);
            commands += 1;
            std::thread::sleep(WRITE_GAP);
        }
    }
    commands
}

/// Runs a command (with `input` written to a file read as `-f`), true when it succeeded;
/// counts it in `issued` just before edgewardctl starts.
fn run_with_input(ctl: &Ctl, args: &[&str], input: Option<&str>, issued: &AtomicU64) -> bool {
    let Some(input) = input else {
        issued.fetch_add(1, Ordering::SeqCst);
        return ctl.run(args).is_ok_and(|r| r.ok());
    };
    let file = match tempfile::NamedTempFile::new() {
        Ok(file) => file,
        Err(_) => return false,
    };
    if std::fs::write(file.path(), input).is_err() {
        return false;
    }
    let path = file.path().to_string_lossy().into_owned();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "-" { path.as_str() } else { a })
        .collect();
    issued.fetch_add(1, Ordering::SeqCst);
    ctl.run(&args).is_ok_and(|r| r.ok())
}

/// Workload w-n: namespace crash, on node 1 or 2 in turn, at an address of its own.
fn crash_workload(n: usize) -> ApiWorkload {
    ApiWorkload {
        name: format!("w-{n}"),
        namespace: "crash".to_owned(),
        service_account: format!("w-{n}"),
        node: 1 + n % 2,
        address: Ipv4Addr::new(198, 18, 128 + (n / 250) as u8, 1 + (n % 250) as u8),
    }
}

#[test]
fn kill_9_during_writes_leaves_a_consistent_state_every_time() {
    let mut mesh = greeter::mesh_with_greeter(MeshOptions::new()).expect("starting the mesh");
    crash_loop(&mut mesh).unwrap();
}

fn crash_loop(mesh: &mut Mesh) -> Result<()> {
    let seed: u64 = rand::random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut targets = Vec::new();
    targets.extend([Target::Control; 6]);
    targets.extend([Target::Proxy(1), Target::Proxy(2)].repeat(5));
    targets.extend([Target::ControlAndProxy(1), Target::ControlAndProxy(2)].repeat(2));
    targets.shuffle(&mut rng);
    assert_eq!(targets.len(), KILLS);

    preload(mesh)?;
    let writer = Writer::start(Ctl::of(mesh));
    let started = Instant::now();
    let mut mid_write = 0;
    for (round, target) in targets.into_iter().enumerate() {
        if started.elapsed() > LOOP_LIMIT {
            bail!("the kill loop ran past {LOOP_LIMIT:?} at round {round}");
        }
        let wait = rng.random_range(BEFORE_KILL_MS);
        std::thread::sleep(Duration::from_millis(wait));
        let killed = pids(mesh, target)?;
        // Half the kills come at a random moment of a command, half the instant a killed
        // process is seen with a write under way.
        let moment = if round % 2 == 0 {
            writer.next_command()?;
            let into = rng.random_range(INTO_COMMAND_MS);
            std::thread::sleep(Duration::from_millis(into));
            format!("{into} ms into a command")
        } else if writing(mesh, &killed) {
            "while it wrote".to_owned()
        } else {
            format!("after {WRITE_WAIT:?} without seeing it write")
        };
        let took = Instant::now();
        kill(mesh, target)?;
        // Temporary files are named after the writing process: one of a killed process was
        // left behind by a kill in the middle of that write. Looked for before the restart,
        // as the restarted process clears such leftovers at its next write.
        let torn: Vec<String> = temporary_files(mesh)
            .into_iter()
            .filter(|f| killed.iter().any(|pid| f.ends_with(&format!(".tmp{pid}"))))
            .collect();
        mid_write += usize::from(!torn.is_empty());
        restart(mesh, target)?;
        check_control(mesh, &writer).map_err(|e| e.context(format!("round {round}")))?;
        eprintln!(
            "round {round:2}: killed {target:?} {moment}; back and consistent in {} ms; left \
             behind {torn:?}",
            took.elapsed().as_millis()
        );
    }
    let commands = writer.stop()?;
    ensure!(
        mid_write >= KILLS / 4,
        "only {mid_write} of {KILLS} kills caught a process in the middle of a write"
    );
    eprintln!(
        "{KILLS} kills in {:.0} s, {mid_write} of them in the middle of a write, {commands} \
         commands written",
        started.elapsed().as_secs_f64()
    );
    converged(mesh)
}

/// Applies `PRELOADED` policies in one document (a namespace nothing uses) and waits until
/// both proxies hold them.
fn preload(mesh: &Mesh) -> Result<()> {
    let mut doc = String::from("policies:\n");
    for n in 0..PRELOADED {
        doc.push_str(&format!(
            "  - name: bulk-{n}\n    action: deny\n    source: {{spiffe_id: \
             spiffe://edgeward.local/ns/bulk/sa/s-{n}}}\n    destination: {{namespace: \
             bulk-dst, ports: [{}]}}\n",
            1 + n % 65535
        ));
    }
    let version = ops::apply_policy(mesh, &doc)?.version()?;
    for k in 1..=2 {
        ops::wait_proxy_version(mesh, k, version, Duration::from_secs(30))?;
    }
    let size = |p: std::path::PathBuf| std::fs::metadata(p).map_or(0, |m| m.len() / 1024);
    eprintln!(
        "preloaded {PRELOADED} policies: state.json {} KiB, node 2's mesh.pb {} KiB",
        size(mesh.control_data_dir().join("state.json")),
        size(mesh.proxy_state_dir(2).join("mesh.pb"))
    );
    Ok(())
}

/// Watches, without pause, for a temporary file of one of `pids`: true as soon as one
/// exists (a write is under way), false after `WRITE_WAIT`.
fn writing(mesh: &Mesh, pids: &[u32]) -> bool {
    let suffixes: Vec<String> = pids.iter().map(|pid| format!(".tmp{pid}")).collect();
    let deadline = Instant::now() + WRITE_WAIT;
    while Instant::now() < deadline {
        let files = temporary_files(mesh);
        if files
            .iter()
            .any(|f| suffixes.iter().any(|s| f.ends_with(s)))
        {
            return true;
        }
    }
    false
}

/// The process ids `target` kills.
fn pids(mesh: &Mesh, target: Target) -> Result<Vec<u32>> {
    let names = match target {
        Target::Control => vec![mesh::CONTROL_NAME.to_owned()],
        Target::Proxy(k) => vec![mesh::proxy_name(k)],
        Target::ControlAndProxy(k) => vec![mesh::CONTROL_NAME.to_owned(), mesh::proxy_name(k)],
    };
    let procs = names
        .iter()
        .map(|n| mesh.topology().proc(n).map(|p| p.pid()));
    procs.collect()
}

/// The temporary files of atomic writes (`.<name>.tmp<pid>`) in the control plane's data
/// directory and the proxies' state directories, by path.
fn temporary_files(mesh: &Mesh) -> BTreeSet<String> {
    let mut dirs = vec![mesh.control_data_dir()];
    for k in 1..=2 {
        dirs.push(mesh.proxy_state_dir(k));
        dirs.push(mesh.proxy_state_dir(k).join("workloads"));
    }
    let entries = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten();
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with('.') && name.contains(".tmp")
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

/// Kills `target` with SIGKILL.
fn kill(mesh: &mut Mesh, target: Target) -> Result<()> {
    match target {
        Target::Control => ops::kill9_control(mesh),
        Target::Proxy(k) => ops::kill9_proxy(mesh, k),
        Target::ControlAndProxy(k) => {
            ops::kill9_proxy(mesh, k)?;
            ops::kill9_control(mesh)
        }
    }
}

/// Starts a killed `target` again. A proxy killed with the control plane comes back first and
/// loads its cache alone; it is ready only once the control plane is back, as a workload added
/// just before the kill may have no SVID yet.
fn restart(mesh: &mut Mesh, target: Target) -> Result<()> {
    match target {
        Target::Control => mesh.start_control(),
        Target::Proxy(k) => {
            mesh.spawn_proxy(k)?;
            restarted_proxy(mesh, k)
        }
        Target::ControlAndProxy(k) => {
            mesh.spawn_proxy(k)?;
            let proc = mesh.topology_mut().proc_mut(&mesh::proxy_name(k))?;
            proc.wait_for_log(CACHE_LOADED, READY_TIMEOUT)?;
            mesh.start_control()?;
            restarted_proxy(mesh, k)
        }
    }
}

/// Waits until node `k`'s restarted proxy is ready; requires it to have served from its
/// cache, with nothing unusable.
fn restarted_proxy(mesh: &mut Mesh, k: usize) -> Result<()> {
    mesh.wait_proxy_ready(k, READY_TIMEOUT)?;
    let log = mesh.proxy_log(k)?;
    let what = format!("node-{k}'s restarted proxy");
    ops::refute_log(&what, &log, &INCONSISTENT)?;
    if !log.contains(CACHE_LOADED) {
        bail!("{what} did not start from its cached mesh state:\n{log}");
    }
    if let Some(line) = log.lines().find(|l| l.contains("does not load")) {
        // A key saved without its certificate (or the reverse): reported, then fetched anew.
        eprintln!("NOTE {what} found a saved SVID it could not load: {line}");
    }
    Ok(())
}

/// With the writer held still: the control plane logged nothing corrupt, and holds every
/// change it acknowledged. Unknown objects are settled to what it holds.
fn check_control(mesh: &Mesh, writer: &Writer) -> Result<()> {
    let mut ledger = writer.hold();
    ops::refute_log(
        "the restarted control plane",
        &mesh.control_log()?,
        &INCONSISTENT,
    )?;
    let held = ops::held(mesh)?;
    for (object, known) in ledger.iter_mut() {
        let present = is_held(&held, object);
        let wrong = match known {
            Known::Present => !present,
            Known::Absent => present,
            Known::Unknown => false,
        };
        if wrong {
            bail!("{object} was acknowledged {known:?}, the control plane says otherwise");
        }
        *known = if present {
            Known::Present
        } else {
            Known::Absent
        };
    }
    Ok(())
}

fn is_held(held: &Held, object: &str) -> bool {
    match object.split_once('/') {
        Some(("policy", name)) => held.policies.contains(name),
        Some(("workload", key)) => held.api_workloads.contains(key),
        _ => false,
    }
}

/// Both proxies reach the version the control plane serves, and calls cross the mesh.
fn converged(mesh: &mut Mesh) -> Result<()> {
    let served = Counter::new(Source::Control, "edgeward_control_snapshot_version", &[]);
    let version = served.read(mesh)? as u64;
    for k in 1..=2 {
        ops::wait_proxy_version(mesh, k, version, CONVERGE_TIMEOUT)?;
        mesh.wait_proxy_ready(k, READY_TIMEOUT)?;
    }
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    rpc::call_ok(&mesh.pod(CLIENT_POD)?.ns, target)?;
    greeter::check_call(mesh)?;
    eprintln!("both proxies hold version {version}; calls cross the mesh");
    Ok(())
}
