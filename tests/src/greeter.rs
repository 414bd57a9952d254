//! The real gRPC peers: the Python greeter server and client from `tests/apps`, run inside
//! pods. The client's JSON lines come back as `Reply` values the tests can assert on.

use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::mesh::{Mesh, MeshOptions};
use crate::netns;
use crate::paths;
use crate::procs::Launch;
use crate::topology::Topology;

/// The port the greeter servers listen on (50051).
pub const GREETER_PORT: u16 = 50051;

/// How long a server may take to import grpcio, compile the proto and listen (30 s).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline for one whole client run (120 s); each call has its own, shorter deadline.
const CLIENT_RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The request path (HTTP/2 `:path`) of the unary method.
pub const SAY_HELLO: &str = "/edgeward.demo.Greeter/SayHello";

/// The request path (HTTP/2 `:path`) of the server-streaming method.
pub const STREAM_GREETINGS: &str = "/edgeward.demo.Greeter/StreamGreetings";

/// A payload marker unique to one call ("<tag>-marker-<16 hex digits>"), to look for in
/// captures: it travels in the request and, echoed, in every reply.
pub fn marker(tag: &str) -> String {
    format!("{tag}-marker-{:016x}", rand::random::<u64>())
}

/// One reply the client received.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// "SayHello" or "StreamGreetings".
    pub rpc: String,
    /// Position in the stream (0 for unary calls).
    pub index: i64,
    /// The greeting, which repeats the request's name.
    pub message: String,
    /// The name of the server that answered.
    pub server: String,
}

/// Name under which the greeter server of `pod` runs (and its log file stem).
pub fn server_name(pod: &str) -> String {
    format!("greeter-{pod}")
}

/// Starts a greeter server in `pod`, listening on the pod's address and `port`; waits until
/// it listens. It answers with its pod name in `Reply::server`.
pub fn start_server(topo: &mut Topology, pod: &str, port: u16) -> Result<()> {
    let python = paths::python()?;
    let pod = topo.pod(pod)?.clone();
    let script = paths::apps_dir().join("greeter_server.py");
    let launch = Launch::new(&pod.ns, &server_name(&pod.name), python)
        .arg("-u")
        .arg(script)
        .args(["--bind", &pod.addr.to_string(), "--port", &port.to_string()])
        .args(["--name", &pod.name]);
    topo.spawn(&launch)?
        .wait_for_log("greeter listening", SERVER_START_TIMEOUT)
}

/// The client pod of `mesh_with_greeter`, on node 1 (workload demo/client).
pub const CLIENT_POD: &str = "client";

/// The server pod of `mesh_with_greeter`, on node 2 (workload demo/greeter).
pub const SERVER_POD: &str = "greeter";

/// Starts a mesh built from `options` with a meshed client pod on node 1 and a meshed greeter
/// pod on node 2 whose server is listening. No call is made yet, so no tunnel exists.
pub fn mesh_with_greeter(options: MeshOptions) -> Result<Mesh> {
    let options = options
        .meshed_pod(1, CLIENT_POD, "demo", "client")
        .meshed_pod(2, SERVER_POD, "demo", "greeter");
    let mut mesh = Mesh::start(options)?;
    start_server(mesh.topology_mut(), SERVER_POD, GREETER_PORT)?;
    Ok(mesh)
}

/// One short client run from `CLIENT_POD` to `SERVER_POD` (two unary calls and a five-reply
/// stream), checked reply by reply.
pub fn check_call(mesh: &Mesh) -> Result<()> {
    let call = ClientCall::new(mesh.pod_addr(SERVER_POD, GREETER_PORT)?, &marker("check"));
    run_client(mesh.topology(), CLIENT_POD, &call)?.check(&call, SERVER_POD)
}

/// What one client run asks for.
#[derive(Clone, Debug)]
pub struct ClientCall {
    /// Server address.
    pub target: SocketAddrV4,
    /// Name sent in every request; put a unique marker in it to find it in captures.
    pub name: String,
    /// Number of unary SayHello calls (default 2).
    pub unary: u32,
    /// Number of replies asked of the one StreamGreetings call (default 5; 0 skips it).
    pub stream: u32,
    /// Gap between stream replies in milliseconds (default 0).
    pub interval_ms: u32,
}

impl ClientCall {
    /// Two unary calls and a five-reply stream to `target`, sending `name`.
    pub fn new(target: SocketAddrV4, name: &str) -> ClientCall {
        ClientCall {
            target,
            name: name.to_owned(),
            unary: 2,
            stream: 5,
            interval_ms: 0,
        }
    }
}

/// The outcome of a successful client run.
#[derive(Clone, Debug)]
pub struct ClientRun {
    /// Every reply, in the order received.
    pub replies: Vec<Reply>,
    /// The client's raw stdout (JSON lines).
    pub stdout: String,
}

impl ClientRun {
    /// Replies of one RPC ("SayHello" or "StreamGreetings").
    pub fn of(&self, rpc: &str) -> Vec<&Reply> {
        self.replies.iter().filter(|r| r.rpc == rpc).collect()
    }

    /// Checks the replies match the call: counts, stream order, name echoed, server name.
    pub fn check(&self, call: &ClientCall, server: &str) -> Result<()> {
        let unary = self.of("SayHello");
        let stream = self.of("StreamGreetings");
        if unary.len() != call.unary as usize || stream.len() != call.stream as usize {
            bail!(
                "expected {} unary and {} stream replies: {self:?}",
                call.unary,
                call.stream
            );
        }
        for (i, reply) in stream.iter().enumerate() {
            if reply.index != i as i64 {
                bail!("stream reply {i} has index {}: {self:?}", reply.index);
            }
        }
        let all = unary.iter().chain(&stream);
        if let Some(bad) = all.clone().find(|r| !r.message.contains(&call.name)) {
            bail!("reply does not echo the name {:?}: {bad:?}", call.name);
        }
        if let Some(bad) = all.clone().find(|r| r.server != server) {
            bail!("reply came from {:?}, not {server:?}: {bad:?}", bad.server);
        }
        Ok(())
    }
}

/// Runs the greeter client in `pod` to completion; fails on any RPC error, showing its output.
pub fn run_client(topo: &Topology, pod: &str, call: &ClientCall) -> Result<ClientRun> {
    let python = paths::python()?;
    let pod = topo.pod(pod)?;
    let script = paths::apps_dir().join("greeter_client.py");
    let args = [
        script.to_string_lossy().into_owned(),
        call.target.to_string(),
        format!("--name={}", call.name),
        format!("--unary={}", call.unary),
        format!("--stream={}", call.stream),
        format!("--interval-ms={}", call.interval_ms),
    ];
    let output = netns::exec(&pod.ns, &python, &args, CLIENT_RUN_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "greeter client in pod {} to {} failed ({}):\n{stdout}{}",
            pod.name,
            call.target,
            output.status,
            crate::procs::tail(&stderr, 20)
        );
    }
    Ok(ClientRun {
        replies: parse_replies(&stdout)?,
        stdout,
    })
}

fn parse_replies(stdout: &str) -> Result<Vec<Reply>> {
    let mut replies = Vec::new();
    for line in stdout.lines().filter(|l| l.contains("\"message\"")) {
        replies.push(serde_json::from_str(line).with_context(|| format!("client line {line}"))?);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_client_output() {
        let stdout = concat!(
            r#"{"index": 0, "message": "Hello, m1!", "rpc": "SayHello", "server": "g"}"#,
            "\n",
            r#"{"index": 0, "message": "Hello, m1! (#0)", "rpc": "StreamGreetings", "#,
            r#""server": "g"}"#,
            "\n",
            r#"{"rpc": "done", "stream": 1, "unary": 1}"#,
        );
        let run = ClientRun {
            replies: parse_replies(stdout).unwrap(),
            stdout: stdout.into(),
        };
        let mut call = ClientCall::new("198.18.2.10:50051".parse().unwrap(), "m1");
        (call.unary, call.stream) = (1, 1);
        run.check(&call, "g").unwrap();
        assert!(run.check(&call, "other").is_err());
        call.stream = 2;
        assert!(run.check(&call, "g").is_err());
    }
}
