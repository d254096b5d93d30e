//! Operators' listings (protocol.md §15): [`Client::list_queues`] and friends fetch every page
//! of a listing and return one list; [`Client::list_queues_page`] and friends ask for one page.
//! Also operators' acts on other connections (§16): [`Client::close_connection`] and
//! [`Client::cancel_consumer`].

use std::cmp::Ordering;

use crate::client::{unexpected_reply, Client};
use crate::error::{Error, Result};
use crate::wire::{
    BindingSummary, CancelConsumer, CloseConnection, ConnectionSummary, ConsumerKey,
    ConsumerSummary, ExchangeSummary, ListBindings, ListBindingsOk, ListConnections,
    ListConnectionsOk, ListConsumers, ListConsumersOk, ListExchanges, ListExchangesOk, ListQueues,
    ListQueuesOk, QueueSummary, Reply, Request,
};

/// One kind of listing: its request, its answer, and how the next page is named.
trait Listing: Sized {
    type Item;
    type Cursor;
    /// The request for the page after `after` (`None`: the first), with the default limit.
    fn request(after: Option<Self::Cursor>) -> Request;
    fn from_reply(reply: Reply) -> Result<Self>;
    fn into_page(self) -> (Vec<Self::Item>, bool);
    /// The cursor that continues after `item`.
    fn cursor(item: &Self::Item) -> Self::Cursor;
    /// How `item` sorts against a cursor.
    fn cmp(item: &Self::Item, cursor: &Self::Cursor) -> Ordering;
}

macro_rules! listing {
    ($ok:ident, $req:ident $({ $($extra:ident: $val:expr),* })?, $field:ident, $item:ty, $cursor:ty, $key:expr, $cmp:expr) => {
        impl Listing for $ok {
            type Item = $item;
            type Cursor = $cursor;

            fn request(after: Option<$cursor>) -> Request {
                $req { after, limit: 0 $($(, $extra: $val)*)? }.into()
            }

            fn from_reply(reply: Reply) -> Result<Self> {
                match reply {
                    Reply::$ok(ok) => Ok(ok),
                    other => Err(unexpected_reply(other)),
                }
            }

            fn into_page(self) -> (Vec<$item>, bool) {
                (self.$field, self.more)
            }

            fn cursor(item: &$item) -> $cursor {
                $key(item)
            }

            fn cmp(item: &$item, cursor: &$cursor) -> Ordering {
                $cmp(item, cursor)
            }
        }
    };
}

listing!(
    ListQueuesOk,
    ListQueues,
    queues,
    QueueSummary,
    String,
    |q: &QueueSummary| q.name.clone(),
    |q: &QueueSummary, c: &String| q.name.cmp(c)
);
listing!(
    ListExchangesOk,
    ListExchanges,
    exchanges,
    ExchangeSummary,
    String,
    |x: &ExchangeSummary| x.name.clone(),
    |x: &ExchangeSummary, c: &String| x.name.cmp(c)
);
listing!(
    ListBindingsOk,
    ListBindings,
    bindings,
    BindingSummary,
    BindingSummary,
    |b: &BindingSummary| b.clone(),
    |b: &BindingSummary, c: &BindingSummary| b.listing_cmp(c)
);
// Circuits too (circuit breaking): a server that predates them answers MALFORMED_REQUEST.
listing!(
    ListConsumersOk,
    ListConsumers { circuit: true },
    consumers,
    ConsumerSummary,
    ConsumerKey,
    |c: &ConsumerSummary| c.key(),
    |c: &ConsumerSummary, k: &ConsumerKey| c.key().cmp(k)
);

listing!(
    ListConnectionsOk,
    ListConnections,
    connections,
    ConnectionSummary,
    u64,
    |c: &ConnectionSummary| c.connection_id,
    |c: &ConnectionSummary, id: &u64| c.connection_id.cmp(id)
);

impl Client {
    /// Lists every queue, sorted by name, with its counters: ready and unacked messages,
    /// consumers, bytes, and publish and ack rates. Exclusive queues of other connections
    /// are listed too. Fetches as many pages as the listing takes (protocol.md §15).
    pub async fn list_queues(&self) -> Result<Vec<QueueSummary>> {
        self.list_all::<ListQueuesOk>().await
    }

    /// Lists every exchange, sorted by name, the default exchange (`""`) and the built-in
    /// `amq.*` ones included. Fetches every page.
    pub async fn list_exchanges(&self) -> Result<Vec<ExchangeSummary>> {
        self.list_all::<ListExchangesOk>().await
    }

    /// Lists every explicit binding, by exchange, queue, routing key and arguments
    /// ([`BindingSummary::listing_cmp`]); the default exchange's implicit bindings are not
    /// listed. Fetches every page.
    pub async fn list_bindings(&self) -> Result<Vec<BindingSummary>> {
        self.list_all::<ListBindingsOk>().await
    }

    /// Lists every consumer of every connection, by queue, tag and connection, with the
    /// circuit of those that have circuit breaking. Fetches every page.
    pub async fn list_consumers(&self) -> Result<Vec<ConsumerSummary>> {
        self.list_all::<ListConsumersOk>().await
    }

    /// Lists every client connection past its handshake, by id: who it is (user, address,
    /// client product and version, connection name), since when, and what it has moved.
    /// Fetches every page.
    pub async fn list_connections(&self) -> Result<Vec<ConnectionSummary>> {
        self.list_all::<ListConnectionsOk>().await
    }

    /// Closes connection `connection_id` (an operator's act): its client gets `Close` with
    /// `CONNECTION_FORCED` and `reason` (empty: the server's default words), and its
    /// unsettled deliveries return to their queues. `NOT_FOUND` if no such connection is live.
    pub async fn close_connection(&self, connection_id: u64, reason: &str) -> Result<()> {
        let request = CloseConnection {
            connection_id,
            reason: reason.to_owned(),
        };
        match self.call(request).await? {
            Reply::CloseConnectionOk => Ok(()),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Cancels the consumer `consumer_tag` of connection `connection_id` (an operator's act):
    /// its client gets `ConsumerCancelled` with `CONSUMER_CANCELLED`, and its unsettled
    /// deliveries return to the queue. `NOT_FOUND` if the connection or the tag is unknown.
    pub async fn cancel_consumer(&self, connection_id: u64, consumer_tag: &str) -> Result<()> {
        let request = CancelConsumer {
            connection_id,
            consumer_tag: consumer_tag.to_owned(),
        };
        match self.call(request).await? {
            Reply::CancelConsumerOk => Ok(()),
            other => Err(unexpected_reply(other)),
        }
    }

    /// Asks for one page of queues: those named after `request.after`, at most
    /// `request.limit` of them (0 = as many as fit in a frame). `more` in the answer says
    /// whether to ask again, with `after` = the last name.
    pub async fn list_queues_page(&self, request: ListQueues) -> Result<ListQueuesOk> {
        ListQueuesOk::from_reply(self.call(request).await?)
    }

    /// Asks for one page of exchanges (see [`list_queues_page`](Self::list_queues_page)).
    pub async fn list_exchanges_page(&self, request: ListExchanges) -> Result<ListExchangesOk> {
        ListExchangesOk::from_reply(self.call(request).await?)
    }

    /// Asks for one page of bindings (see [`list_queues_page`](Self::list_queues_page)).
    pub async fn list_bindings_page(&self, request: ListBindings) -> Result<ListBindingsOk> {
        ListBindingsOk::from_reply(self.call(request).await?)
    }

    /// Asks for one page of consumers (see [`list_queues_page`](Self::list_queues_page)).
    pub async fn list_consumers_page(&self, request: ListConsumers) -> Result<ListConsumersOk> {
        ListConsumersOk::from_reply(self.call(request).await?)
    }

    /// Asks for pages until one says no more follow. Each page must start after the last
    /// item of the one before, so a confused server cannot keep the client asking forever.
    async fn list_all<L: Listing>(&self) -> Result<Vec<L::Item>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let reply = self.call(L::request(after.take())).await?;
            let (items, more) = L::from_reply(reply)?.into_page();
            if let (Some(first), Some(cursor)) = (items.first(), all.last().map(L::cursor)) {
                if L::cmp(first, &cursor) != Ordering::Greater {
                    return Err(Error::Protocol("a listing page did not advance".into()));
                }
            }
            all.extend(items);
            if !more {
                return Ok(all);
            }
            // A page with more to follow is never empty (the codec rejects it).
            after = all.last().map(L::cursor);
        }
    }
}
