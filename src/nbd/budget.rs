//! How many bytes of requests and replies the server holds in memory.
//!
//! A read's reply holds its data until the client has taken it off the
//! socket, and a write's payload is held from the moment it is read. A
//! client that pipelines large reads and never reads the replies would make
//! the server hold all of them. So each request holds its bytes from two
//! budgets, its connection's and the server's, until its reply is written:
//! when a connection's budget is spent, the server stops reading its
//! requests (TCP pushes back on the client), and when the server's is,
//! every connection waits for replies to drain. A reply that cannot be
//! written for [`super::transmission::REPLY_STALL_TIMEOUT`] ends its
//! connection, so a client that stops reading cannot keep the server's
//! budget from the others.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::MAX_REQUEST_LEN;

/// Bytes one connection's requests and replies may hold: two of the
/// largest requests.
pub const CONNECTION_BYTES: u32 = 2 * MAX_REQUEST_LEN;

/// Bytes all connections of a server may hold together, by default.
pub const SERVER_BYTES: u32 = 512 << 20;

/// A server's budget, shared by its connections.
#[derive(Clone, Debug)]
pub struct ServerBudget {
    bytes: Arc<Semaphore>,
}

impl Default for ServerBudget {
    fn default() -> Self {
        ServerBudget::new(SERVER_BYTES)
    }
}

impl ServerBudget {
    /// A budget of `bytes`, at least one largest request.
    pub fn new(bytes: u32) -> ServerBudget {
        ServerBudget {
            bytes: Arc::new(Semaphore::new(bytes.max(MAX_REQUEST_LEN) as usize)),
        }
    }

    /// The budget of a new connection, drawing on this one.
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            connection: Arc::new(Semaphore::new(CONNECTION_BYTES as usize)),
            server: Arc::clone(&self.bytes),
        }
    }
}

/// One connection's budget.
pub struct ConnectionBudget {
    connection: Arc<Semaphore>,
    server: Arc<Semaphore>,
}

/// Bytes held from both budgets; given back when dropped.
#[derive(Debug)]
pub struct Held {
    _connection: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
}

impl ConnectionBudget {
    /// Waits until `bytes` (at most [`MAX_REQUEST_LEN`]) fit in both
    /// budgets, and holds them.
    pub async fn hold(&self, bytes: u32) -> Held {
        let bytes = bytes.min(MAX_REQUEST_LEN);
        let connection = Arc::clone(&self.connection).acquire_many_owned(bytes);
        let connection = connection.await.expect("the budget is never closed");
        let server = Arc::clone(&self.server).acquire_many_owned(bytes);
        let server = server.await.expect("the budget is never closed");
        Held {
            _connection: connection,
            _server: server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_waits_once_its_budget_or_the_servers_is_spent() {
        let server = ServerBudget::new(3 * MAX_REQUEST_LEN);
        let one = server.connection();
        let two = server.connection();
        let first = one.hold(MAX_REQUEST_LEN).await;
        let _second = one.hold(MAX_REQUEST_LEN).await;
        assert!(
            poll_once(one.hold(1)).await.is_none(),
            "past the connection's budget"
        );
        let _third = two.hold(MAX_REQUEST_LEN).await;
        assert!(
            poll_once(two.hold(1)).await.is_none(),
            "past the server's budget"
        );
        drop(first);
        assert!(
            poll_once(two.hold(1)).await.is_some(),
            "given back when dropped"
        );
    }

    /// The future's output if it is ready at once.
    async fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
        tokio::time::timeout(std::time::Duration::ZERO, future)
            .await
            .ok()
    }
}
