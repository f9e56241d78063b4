//! MQTT wire format: the parts the proxy and the health checker speak.
//!
//! Pure and socket-free: [`connect`] peeks at a client's first packet,
//! [`packets`] encodes the few packets the proxy sends itself, [`codec`] is
//! the full packet codec of the broker, [`topic`] validates and matches
//! topic names and filters (MQTT 4.7).

pub mod codec;
pub mod connect;
pub mod framing;
pub mod packets;
pub mod rc;
pub mod topic;

pub use connect::{Connect, ConnectError, Peek, ProtocolVersion, peek_connect};
