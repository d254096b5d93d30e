//! The TCP listener and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::connection;

/// Time connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound, running server.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    listener: TcpListener,
}

impl Server {
    /// Opens the broker and binds its listener.
    pub async fn bind(broker: Arc<Broker>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(broker.config.listen).await?;
        Ok(Self { broker, listener })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then closes every connection, lets every queue write
    /// what is pending, and returns once the data is synced.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.broker.check_disk();
        let disk = tokio::spawn(Arc::clone(&self.broker).watch_disk());
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(connection::serve(Arc::clone(&self.broker), stream, stop_rx.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down: closing connections");
        disk.abort();
        drop(self.listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        if drained.is_ok() && self.broker.shutdown_queues().await {
            match self.broker.store().mark_clean_stop() {
                Ok(()) => tracing::info!("queues closed; clean stop recorded"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not record the clean stop; the next start assumes a crash")
                }
            }
        } else {
            tracing::warn!(
                "not every connection or queue closed in time; the next start assumes a crash"
            );
        }
    }
}
