//! The Registry service: Watch (a full snapshot per change, for proxies of the first slice) and
//! Subscribe (versioned incremental updates with resume).

use std::net::SocketAddr;
use std::sync::Arc;

use edgeward_proto::v1;
use edgeward_proto::v1::registry_server::Registry as RegistryService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{change_refused, Api};
use crate::hub::{now_unix, Hub};

/// Messages a stream may hold for a slow proxy before its task waits; later changes then
/// arrive merged.
const STREAM_BUFFER: usize = 4;

/// The most tunnel addresses a node may advertise; a node has one per address family and
/// interface it serves on, and the list is stored and sent to every other proxy.
const MAX_TUNNEL_ADDRESSES: usize = 16;

impl Api {
    /// Checks the tunnel addresses a node announces and records that it was seen.
    fn node_opened_stream(
        &self,
        call: &str,
        node: &str,
        mut addresses: Vec<String>,
    ) -> Result<(), Status> {
        if addresses.len() > MAX_TUNNEL_ADDRESSES {
            let msg = format!(
                "{} tunnel addresses advertised; at most {MAX_TUNNEL_ADDRESSES} are accepted",
                addresses.len()
            );
            return Err(self.refuse(call, "bad_address", Status::invalid_argument(msg)));
        }
        if let Some(bad) = addresses.iter().find(|a| a.parse::<SocketAddr>().is_err()) {
            let msg = format!("tunnel address {bad:?} is not ip:port");
            return Err(self.refuse(call, "bad_address", Status::invalid_argument(msg)));
        }
        addresses.sort();
        self.hub
            .node_seen(node, addresses, now_unix())
            .map_err(|e| change_refused(self, call, e))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl RegistryService for Api {
    type WatchStream = ReceiverStream<Result<v1::Snapshot, Status>>;

    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let node = self.node_peer("Watch", &req)?;
        self.node_opened_stream("Watch", &node, req.into_inner().tunnel_addresses)?;

        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(forward_snapshots(self.hub.clone(), node, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SubscribeStream = ReceiverStream<Result<v1::Update, Status>>;

    async fn subscribe(
        &self,
        req: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let node = self.node_peer("Subscribe", &req)?;
        let req = req.into_inner();
        self.node_opened_stream("Subscribe", &node, req.tunnel_addresses)?;

        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            hub.watcher_change(&node, true);
            tracing::info!(
                %node,
                have_version = req.have_version,
                have_epoch = %req.have_epoch,
                "subscribe opened"
            );
            hub.feed()
                .stream(req.have_version, &req.have_epoch, tx)
                .await;
            hub.watcher_change(&node, false);
            tracing::info!(%node, "subscribe closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends the current snapshot, then every newer one, until the proxy goes away.
async fn forward_snapshots(
    hub: Arc<Hub>,
    node: String,
    tx: mpsc::Sender<Result<v1::Snapshot, Status>>,
) {
    hub.watcher_change(&node, true);
    tracing::info!(%node, "watch opened");
    let mut snapshots = hub.subscribe();
    loop {
        let snapshot = snapshots.borrow_and_update().as_ref().clone();
        if tx.send(Ok(snapshot)).await.is_err() {
            break;
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = tx.closed() => break,
        }
    }
    hub.watcher_change(&node, false);
    tracing::info!(%node, "watch closed");
}
