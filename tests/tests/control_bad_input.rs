//! Bad input to the control plane and the state files (issue #4). Policy documents that are
//! malformed YAML, carry an unknown field or name an invalid SPIFFE ID are refused whole by
//! `edgewardctl policy apply`, with a message naming the line and the field, and the policies
//! in force stay enforced. A proxy whose cached mesh state (`mesh.pb`) is garbage or cut short
//! sets it aside, says so, fetches the state afresh and becomes ready. A control plane whose
//! `state.json` is corrupt refuses to start, naming the file, and leaves the file as it was;
//! with the file restored it starts and serves what it served before.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use edgeward_lab::greeter::{self, CLIENT_POD, GREETER_PORT, SERVER_POD};
use edgeward_lab::mesh::CONTROL_NAME;
use edgeward_lab::metrics::{Counter, Source};
use edgeward_lab::ops::{self, Held};
use edgeward_lab::{rpc, wait, Mesh, MeshOptions};

/// A pod on node 1 whose workload the policies deny (legacy/old).
const LEGACY: &str = "legacy";

/// The SPIFFE ID of `LEGACY`.
const LEGACY_ID: &str = "spiffe://edgeward.local/ns/legacy/sa/old";

/// How long a change or a denial may take to show (10 s).
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a proxy may take to be ready after a restart (30 s).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The policies in force: demo denies unless allowed, allows demo callers, denies legacy/old.
const POLICIES: &str = "\
policies:
  - name: allow-demo
    action: allow
    source: {namespace: demo}
    destination: {namespace: demo}
  - name: no-legacy
    action: deny
    source: {spiffe_id: spiffe://edgeward.local/ns/legacy/sa/old}
    destination: {namespace: demo}
namespaces:
  - name: demo
    default_action: deny
";

/// A document refused whole, and what its refusal must say.
struct Refused {
    what: &'static str,
    yaml: &'static str,
    expected: &'static [&'static str],
}

const REFUSED: [Refused; 3] = [
    Refused {
        what: "malformed YAML (a flow sequence closed by a brace)",
        yaml: "\
policies:
  - name: broken
    action: allow
    source: {namespace: demo}
    destination: {namespace: demo, ports: [50051}
",
        expected: &["line 5"],
    },
    Refused {
        what: "an unknown field",
        yaml: "\
policies:
  - name: allow-extra
    action: allow
    source: {namespace: ops}
    destination: {namespace: demo}
    priority: 5
",
        expected: &[
            "line 6, column 5",
            "policies[0]",
            "unknown field `priority`",
        ],
    },
    Refused {
        what: "an invalid SPIFFE ID after a valid policy, with a namespace default",
        yaml: "\
policies:
  - name: allow-ops
    action: allow
    source: {namespace: ops}
    destination: {namespace: demo}
  - name: deny-bad-id
    action: deny
    source:
      spiffe_id: spiffe://edgeward.local/ns/legacy/sa/
    destination:
      namespace: demo
namespaces:
  - name: demo
    default_action: allow
",
        expected: &["line 9, column 18", "policies[1].source.spiffe_id"],
    },
];

/// A mesh with the greeter, a legacy pod and `POLICIES` in force on both proxies.
fn guarded_mesh() -> Result<Mesh> {
    let options = MeshOptions::new().meshed_pod(1, LEGACY, "legacy", "old");
    let mesh = greeter::mesh_with_greeter(options)?;
    let version = ops::apply_policy(&mesh, POLICIES)?.version()?;
    for k in 1..=2 {
        ops::wait_proxy_version(&mesh, k, version, SHOW_TIMEOUT)?;
    }
    enforcing(&mesh, "with the policies applied")?;
    Ok(mesh)
}

/// The client's call succeeds and the legacy pod's is denied by `no-legacy`, audited.
fn enforcing(mesh: &Mesh, when: &str) -> Result<()> {
    let target = mesh.pod_addr(SERVER_POD, GREETER_PORT)?;
    rpc::call_ok(&mesh.pod(CLIENT_POD)?.ns, target).context(when.to_owned())?;
    let audits = ops::count_audit(mesh, 2, "no-legacy", LEGACY_ID)?;
    let attempt = rpc::call(&mesh.pod(LEGACY)?.ns, target)?;
    ensure!(!attempt.ok(), "{when}: the legacy pod's call was allowed");
    wait::until(
        &format!("{when}: the no-legacy audit line"),
        SHOW_TIMEOUT,
        || Ok((ops::count_audit(mesh, 2, "no-legacy", LEGACY_ID)? > audits).then_some(())),
    )
}

#[test]
fn bad_policy_documents_are_refused_whole_and_the_policies_in_force_stay() {
    let mesh = guarded_mesh().expect("starting the mesh");
    refused_documents(&mesh).unwrap();
}

fn refused_documents(mesh: &Mesh) -> Result<()> {
    let refusals = Counter::new(
        Source::Control,
        "edgeward_control_policy_applies_total",
        &[("result", "refused")],
    );
    let before: Held = ops::held(mesh)?;
    for (i, case) in REFUSED.iter().enumerate() {
        let counted = refusals.read(mesh)?;
        let (run, file) = ops::try_apply_policy(mesh, case.yaml)?;
        let stderr = run.stderr();
        eprintln!("{}: {}", case.what, stderr.trim());
        ensure!(!run.ok(), "{}: the document was applied", case.what);
        ensure!(
            stderr.contains(&format!("{file} was not applied")),
            "{}: the refusal does not name the file: {stderr}",
            case.what
        );
        for expected in case.expected {
            ensure!(
                stderr.contains(expected),
                "{}: the refusal does not say {expected:?}: {stderr}",
                case.what
            );
        }
        refusals.expect_increase(mesh, counted, 1.0, SHOW_TIMEOUT)?;
        let after = ops::held(mesh)?;
        ensure!(
            after == before,
            "{}: what the control plane holds changed: {before:?} became {after:?}",
            case.what
        );
        enforcing(mesh, &format!("after refused document {i} ({})", case.what))?;
    }
    Ok(())
}

#[test]
fn a_corrupt_mesh_cache_is_set_aside_and_fetched_afresh() {
    let mut mesh = guarded_mesh().expect("starting the mesh");
    let state = mesh.proxy_state_dir(2);
    let garbage: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    corrupt_cache(&mut mesh, "random bytes", garbage).unwrap();
    let whole = std::fs::read(state.join("mesh.pb")).unwrap();
    let half = whole[..whole.len() / 2].to_vec();
    corrupt_cache(&mut mesh, "its first half", half).unwrap();
}

/// Stops node 2's proxy, replaces its `mesh.pb` with `bytes`, starts it and checks that it set
/// the file aside, fetched the state and enforces it.
fn corrupt_cache(mesh: &mut Mesh, what: &str, bytes: Vec<u8>) -> Result<()> {
    let state = mesh.proxy_state_dir(2);
    let (cache, aside) = (state.join("mesh.pb"), state.join("mesh.pb.corrupt"));
    mesh.stop_proxy(2)?;
    ops::damage_file(&cache, &bytes)?;
    let took = ops::start_proxy_within(mesh, 2, READY_TIMEOUT)?;

    let log = mesh.proxy_log(2)?;
    let line = log
        .lines()
        .find(|l| l.contains("the cached mesh state is unusable; set aside, fetching it afresh"));
    let line = line.with_context(|| format!("{what}: no set-aside line in the log:\n{log}"))?;
    ensure!(
        line.contains("ERROR") && line.contains(&cache.display().to_string()),
        "{what}: the set-aside line is not an error naming the file: {line}"
    );
    eprintln!("mesh.pb holding {what}: ready in {took:?}; {line}");
    ensure!(
        std::fs::read(&aside)? == bytes,
        "{what}: mesh.pb.corrupt does not hold the bytes set aside"
    );
    wait::until("a fresh mesh.pb", SHOW_TIMEOUT, || {
        Ok(std::fs::read(&cache)
            .is_ok_and(|b| b != bytes)
            .then_some(()))
    })?;
    enforcing(mesh, &format!("after mesh.pb held {what}"))
}

#[test]
fn a_corrupt_control_state_file_stops_the_control_plane_with_its_name() {
    let mut mesh = guarded_mesh().expect("starting the mesh");
    corrupt_state_json(&mut mesh).unwrap();
}

fn corrupt_state_json(mesh: &mut Mesh) -> Result<()> {
    let before = ops::held(mesh)?;
    let path = mesh.control_data_dir().join("state.json");
    let original = std::fs::read(&path)?;
    mesh.stop_control()?;

    // A file cut short in the middle of its records, as a disk fault would leave it.
    let broken = original[..original.len() / 2].to_vec();
    ops::damage_file(&path, &broken)?;
    let started = mesh.start_control();
    ensure!(
        started.is_err(),
        "the control plane started on a corrupt state file"
    );
    let proc = mesh.topology_mut().proc_mut(CONTROL_NAME)?;
    let status = wait::until("the control plane to exit", SHOW_TIMEOUT, || {
        proc.exit_status()
    })?;
    let log = proc.log_text();
    mesh.topology_mut().stop(CONTROL_NAME)?;
    eprintln!(
        "control plane on a corrupt state.json: {status}; {}",
        log.trim()
    );
    ensure!(!status.success(), "the control plane exited with {status}");
    let shown = path.display().to_string();
    let message = format!("state file {shown} is corrupt");
    ensure!(
        log.contains(&message) && log.contains("restore it from a backup or move it away"),
        "the control plane's message does not name {shown} as corrupt:\n{log}"
    );
    ensure!(
        std::fs::read(&path)? == broken,
        "the control plane rewrote the corrupt state file"
    );
    enforcing(mesh, "while the control plane cannot start")?;

    // Restored, it serves what it served, and the proxies subscribe again.
    std::fs::write(&path, &original)?;
    mesh.start_control()?;
    ops::wait_subscribers(mesh, 2.0, Duration::from_secs(60))?;
    let after = ops::held(mesh)?;
    ensure!(
        after.policies == before.policies && after.namespaces == before.namespaces,
        "the restored control plane holds {after:?}, not {before:?}"
    );
    let log = mesh.control_log()?;
    ensure!(
        !log.contains("corrupt"),
        "the restored control plane:\n{log}"
    );
    enforcing(mesh, "after the state file was restored")
}
