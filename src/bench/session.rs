//! One MQTT client session of the load generator, on the project's codec:
//! CONNECT/CONNACK, SUBSCRIBE/SUBACK, packets queued into one write
//! buffer and flushed together, and a cancel-safe [`Session::next`] (its
//! only await is a `read_buf` into the session's own buffer, so a `select!`
//! that drops it loses nothing).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::net::Io;
use super::stats::ErrorKind;
use crate::mqtt::ProtocolVersion;
use crate::mqtt::codec::{self, ConnectPacket, Packet, Properties, SubOptions};

/// Largest packet a bench client accepts.
const MAX_PACKET: usize = 16 * 1024 * 1024;

pub struct Session {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub protocol: ProtocolVersion,
}

/// What a client says in its CONNECT.
#[derive(Debug, Clone)]
pub struct Hello<'a> {
    pub client_id: &'a str,
    pub clean: bool,
    pub keep_alive: Duration,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    /// MQTT 5 session expiry for persistent sessions.
    pub session_expiry: Option<u32>,
}

/// Why [`Session::open`] failed: the kind, and for a CONNACK that refused
/// the client its return (3.1.1) or reason (5.0) code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError {
    pub kind: ErrorKind,
    pub connack: Option<u8>,
}

impl From<ErrorKind> for OpenError {
    fn from(kind: ErrorKind) -> OpenError {
        OpenError {
            kind,
            connack: None,
        }
    }
}

impl Session {
    /// CONNECT and wait for an accepted CONNACK within `deadline`.
    pub async fn open(
        io: Box<dyn Io>,
        protocol: ProtocolVersion,
        hello: &Hello<'_>,
        deadline: Duration,
    ) -> Result<Session, OpenError> {
        let mut s = Session {
            io,
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(256),
            protocol,
        };
        let props = Properties {
            session_expiry: hello
                .session_expiry
                .filter(|_| protocol == ProtocolVersion::V5),
            ..Properties::default()
        };
        s.queue(&Packet::Connect(Box::new(ConnectPacket {
            protocol,
            clean: hello.clean,
            keep_alive: u16::try_from(hello.keep_alive.as_secs()).unwrap_or(u16::MAX),
            client_id: hello.client_id.to_owned(),
            will: None,
            username: hello.username.map(str::to_owned),
            password: hello.password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            props,
        })));
        s.flush().await?;
        match timeout(deadline, s.next()).await {
            Err(_) => Err(ErrorKind::NoAnswer.into()),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(Packet::Connack { code: 0, .. })) => Ok(s),
            Ok(Ok(Packet::Connack { code, .. })) => Err(OpenError {
                kind: ErrorKind::Refused,
                connack: Some(code),
            }),
            Ok(Ok(_)) => Err(ErrorKind::Protocol.into()),
        }
    }

    /// SUBSCRIBE to one filter and wait for a granting SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: u8,
        deadline: Duration,
    ) -> Result<(), ErrorKind> {
        self.queue(&Packet::Subscribe {
            pkid: 1,
            filters: vec![(
                filter.to_owned(),
                SubOptions {
                    qos,
                    ..SubOptions::default()
                },
            )],
            props: Properties::default(),
        });
        self.flush().await?;
        let end = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(end, self.next()).await {
                Err(_) => return Err(ErrorKind::NoAnswer),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Packet::Suback { codes, .. })) => {
                    return match codes.first() {
                        Some(c) if *c < 0x80 => Ok(()),
                        _ => Err(ErrorKind::Refused),
                    };
                }
                // Retained messages may arrive before the SUBACK.
                Ok(Ok(Packet::Publish(_))) => {}
                Ok(Ok(_)) => return Err(ErrorKind::Protocol),
            }
        }
    }

    /// Encode `p` into the write buffer (sent by the next [`flush`]).
    ///
    /// [`flush`]: Session::flush
    pub fn queue(&mut self, p: &Packet) {
        codec::encode(p, self.protocol, &mut self.wbuf);
    }

    pub async fn flush(&mut self) -> Result<(), ErrorKind> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.io
            .write_all(&self.wbuf)
            .await
            .map_err(|_| ErrorKind::Closed)?;
        self.wbuf.clear();
        self.io.flush().await.map_err(|_| ErrorKind::Closed)
    }

    /// The next packet from the server. Cancel-safe.
    pub async fn next(&mut self) -> Result<Packet, ErrorKind> {
        loop {
            match codec::frame_len(&self.rbuf, MAX_PACKET) {
                Ok(Some(len)) => {
                    let frame = self.rbuf.split_to(len).freeze();
                    return codec::decode(frame, self.protocol).map_err(|_| ErrorKind::Protocol);
                }
                Ok(None) => {}
                Err(_) => return Err(ErrorKind::Protocol),
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Err(ErrorKind::Closed),
                Ok(_) => {}
            }
        }
    }

    /// DISCONNECT, then close (TLS: close_notify), best effort.
    pub async fn close(mut self) {
        self.queue(&Packet::Disconnect {
            code: 0,
            props: Properties::default(),
        });
        let _ = timeout(Duration::from_secs(1), async {
            let _ = self.flush().await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}
