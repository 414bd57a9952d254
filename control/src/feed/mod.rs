//! The Subscribe feed: each committed view is published once, through one `watch` channel that
//! every subscriber's task follows. The usual step (one version ahead) is built once at publish
//! time and shared; only a subscriber that fell behind, or one that just connected, merges
//! steps from the history itself.

pub mod history;
pub mod view;

use std::sync::{Arc, Mutex};

use edgeward_proto::v1;
use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::metrics::Metrics;
use history::History;
use view::{Touched, View};

/// A view as published, with the delta from the version before it when there is one.
#[derive(Debug)]
pub struct Published {
    /// What is served now.
    pub view: Arc<View>,
    /// The delta from `view.version - 1`, shared by every subscriber that holds that version.
    pub step: Option<Arc<v1::Update>>,
}

/// What kind of update a subscriber was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Everything.
    Full = 0,
    /// The changes since the version the subscriber holds.
    Delta = 1,
    /// Nothing changed since the version the subscriber holds.
    InSync = 2,
}

/// The feed of versioned updates.
pub struct Feed {
    epoch: String,
    latest: watch::Sender<Arc<Published>>,
    history: Mutex<History>,
    metrics: Metrics,
    sent: [IntCounter; 3],
}

impl Feed {
    /// A feed of `epoch` that serves `view` until the first publish.
    pub fn new(epoch: String, view: Arc<View>, metrics: Metrics) -> Self {
        let published = Arc::new(Published { view, step: None });
        let sent =
            ["full", "delta", "in_sync"].map(|k| metrics.updates_sent.with_label_values(&[k]));
        Self {
            epoch,
            latest: watch::channel(published).0,
            history: Mutex::new(History::default()),
            metrics,
            sent,
        }
    }

    /// The epoch of every version this feed serves.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The view served now.
    pub fn current(&self) -> Arc<View> {
        self.latest.borrow().view.clone()
    }

    /// Serves `view`, which changed `touched` since the view served before.
    pub fn publish(&self, view: Arc<View>, touched: Touched) {
        let from = self.latest.borrow().view.version;
        let step = (from.checked_add(1) == Some(view.version))
            .then(|| Arc::new(view.delta(&self.epoch, from, &touched)));
        self.history().record(view.version, touched);
        self.latest.send_replace(Arc::new(Published { view, step }));
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first update for a subscriber that holds `have_version` of `have_epoch`.
    pub fn first_update(
        &self,
        view: &View,
        have_version: u64,
        have_epoch: &str,
    ) -> (v1::Update, Kind) {
        if have_epoch != self.epoch || have_version == 0 {
            return (view.full(&self.epoch), Kind::Full);
        }
        self.catch_up(view, have_version)
    }

    /// The update that brings a holder of `held` (of this epoch) to `view`: empty when it is
    /// there, a merged delta when the history reaches back to `held`, else everything.
    fn catch_up(&self, view: &View, held: u64) -> (v1::Update, Kind) {
        if held == view.version {
            return (
                view.delta(&self.epoch, held, &Touched::default()),
                Kind::InSync,
            );
        }
        let touched = self.history().since(held, view.version);
        match touched {
            Some(touched) => (view.delta(&self.epoch, held, &touched), Kind::Delta),
            None => (view.full(&self.epoch), Kind::Full),
        }
    }

    /// The update after `held` for a subscriber that saw `published`.
    fn next_update(&self, published: &Published, held: u64) -> (v1::Update, Kind) {
        match &published.step {
            Some(step) if step.from_version == held => (step.as_ref().clone(), Kind::Delta),
            _ => self.catch_up(&published.view, held),
        }
    }

    /// Sends the first update, then one per change, until the receiver of `tx` goes away.
    /// Changes published while the receiver is slow arrive merged into one delta.
    pub async fn stream(
        &self,
        have_version: u64,
        have_epoch: &str,
        tx: mpsc::Sender<Result<v1::Update, Status>>,
    ) {
        let _count = SubscriberCount::new(&self.metrics);
        let mut latest = self.latest.subscribe();
        let first = latest.borrow_and_update().clone();
        let (update, kind) = self.first_update(&first.view, have_version, have_epoch);
        let mut held = update.version;
        if !self.send(&tx, update, kind).await {
            return;
        }
        loop {
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let published = latest.borrow_and_update().clone();
            if published.view.version == held {
                continue;
            }
            let (update, kind) = self.next_update(&published, held);
            held = update.version;
            if !self.send(&tx, update, kind).await {
                return;
            }
        }
    }

    async fn send(
        &self,
        tx: &mpsc::Sender<Result<v1::Update, Status>>,
        update: v1::Update,
        kind: Kind,
    ) -> bool {
        let sent = tx.send(Ok(update)).await.is_ok();
        if sent {
            self.sent[kind as usize].inc();
        }
        sent
    }
}

/// Counts an open stream in the subscribers gauge for as long as it lives.
struct SubscriberCount<'a>(&'a Metrics);

impl<'a> SubscriberCount<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.subscribers.inc();
        Self(metrics)
    }
}

impl Drop for SubscriberCount<'_> {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

#[cfg(test)]
mod tests;
