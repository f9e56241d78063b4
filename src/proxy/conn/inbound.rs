//! The inbound PROXY header, on listeners behind a balancer
//! (`proxy_protocol = "optional"` or `"required"`), before anything else:
//! TLS, the WebSocket upgrade, the CONNECT. Only a peer in
//! `proxy_protocol_from` may connect at all; exactly the header's bytes are
//! read (peeked, then consumed), so what follows it reaches the next stage
//! untouched; and the address it names is the client's address from then
//! on — the source rate limit, the logs, the PROXY header to the brokers.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{Span, debug, field, info};

use super::{Conn, Refusal};
use crate::proxy_protocol::inbound::{self, Invalid, MAX_LISTENER_HEADER, Scan, V1_MAX};
use crate::ratelog::LogLimiter;

/// Why no header was read.
#[derive(Debug)]
enum Failed {
    Closed,
    Io(std::io::Error),
    Invalid(Invalid),
}

impl Conn {
    /// Check the peer, read its header under `proxy_protocol_timeout`, and
    /// take the client's address (and the TLVs a pool passes on) from it;
    /// then the source rate limit on that address.
    pub(super) async fn proxy_header(&mut self, tcp: &TcpStream) -> Result<(), Refusal> {
        let ctx = self.ctx.clone();
        let Some(inbound) = &ctx.proxy_protocol else {
            return Ok(());
        };
        let peer = self.peer;
        if !inbound.from.contains(peer.ip()) {
            static UNTRUSTED: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = UNTRUSTED.allow() {
                info!(peer.addr = %peer, suppressed, "peer not in proxy_protocol_from; refused");
            }
            return Err(Refusal::ProxyUntrusted);
        }
        let header = match timeout(inbound.timeout, read_header(tcp)).await {
            Ok(Ok(header)) => header,
            Ok(Err(Failed::Closed)) => {
                debug!(peer.addr = %peer, "peer left before a PROXY header");
                return Err(Refusal::ClosedBeforeConnect);
            }
            Ok(Err(Failed::Io(e))) => {
                debug!(peer.addr = %peer, error = %e, "read error before a PROXY header");
                return Err(Refusal::ReadError);
            }
            Ok(Err(Failed::Invalid(e))) => return Err(invalid(peer, e)),
            Err(_) => {
                debug!(peer.addr = %peer, timeout = ?inbound.timeout, "no complete PROXY header before the deadline");
                return Err(Refusal::ProxyHeaderTimeout);
            }
        };
        match header {
            Some(bytes) => {
                let received = inbound::parse(&bytes).map_err(|e| invalid(peer, e))?;
                // LOCAL and UNKNOWN: the connection's own addresses stand.
                if let Some((client, local)) = received.addresses() {
                    Span::current().record("proxy.addr", field::display(peer));
                    self.peer = client;
                    self.local = local;
                }
                self.tlvs = received.keep(&ctx.keep_tlvs);
            }
            None if inbound.required => {
                static MISSING: LogLimiter = crate::ratelog::per_kind();
                if let Some(suppressed) = MISSING.allow() {
                    info!(peer.addr = %peer, suppressed, "no PROXY header (proxy_protocol = \"required\"); refused");
                }
                return Err(Refusal::ProxyHeaderMissing);
            }
            None => {}
        }
        Span::current().record("client.addr", field::display(self.peer));
        if !ctx.state.source_limit.admit(&self.peer.ip()) {
            return Err(Refusal::SourceRateLimit);
        }
        Ok(())
    }
}

fn invalid(peer: SocketAddr, e: Invalid) -> Refusal {
    static INVALID: LogLimiter = crate::ratelog::per_kind();
    if let Some(suppressed) = INVALID.allow() {
        info!(peer.addr = %peer, error = %e, suppressed, "PROXY header refused");
    }
    Refusal::ProxyHeaderInvalid
}

/// Read exactly the PROXY header at the start of `tcp`, not a byte more:
/// peek, let [`inbound::scan`] say how much of it is header, consume that.
/// `None` when the first bytes show there is none (nothing consumed).
async fn read_header(tcp: &TcpStream) -> Result<Option<Vec<u8>>, Failed> {
    let mut buf = Vec::new();
    // buf[..have]: header bytes consumed so far.
    let mut have = 0;
    let mut look = V1_MAX;
    loop {
        buf.resize(have + look, 0);
        let Some(room) = buf.get_mut(have..) else {
            return Err(Failed::Invalid(Invalid::Malformed));
        };
        let n = tcp.peek(room).await.map_err(Failed::Io)?;
        if n == 0 {
            return Err(Failed::Closed);
        }
        let seen = have + n;
        let (take, next) =
            match inbound::scan(buf.get(..seen).unwrap_or_default(), MAX_LISTENER_HEADER) {
                Scan::Absent if have == 0 => return Ok(None),
                // What was consumed began a header; what came next did not
                // go on with it.
                Scan::Absent => return Err(Failed::Invalid(Invalid::Malformed)),
                Scan::Invalid(e) => return Err(Failed::Invalid(e)),
                Scan::Complete(len) => (len, None),
                // Everything seen belongs to the header: consume it, so
                // the next peek waits for more instead of spinning.
                Scan::Partial { look } => (seen, Some(look)),
            };
        let Some(header_bytes) = buf.get_mut(have..take) else {
            return Err(Failed::Invalid(Invalid::Malformed));
        };
        // Already peeked: in the socket's buffer, so this returns at once.
        read_exact(tcp, header_bytes).await?;
        have = take;
        match next {
            Some(more) => look = more,
            None => {
                buf.truncate(have);
                return Ok(Some(buf));
            }
        }
    }
}

/// Fill `buf` from `tcp` (shared: the stream stays where it is, for the
/// stages after this one).
async fn read_exact(tcp: &TcpStream, buf: &mut [u8]) -> Result<(), Failed> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        tcp.readable().await.map_err(Failed::Io)?;
        match tcp.try_read(rest) {
            Ok(0) => return Err(Failed::Closed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Failed::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: (client side, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// The header, sent in pieces of every size, is read whole and what
    /// follows it (a TLS ClientHello's first bytes) stays unread.
    #[tokio::test]
    async fn reads_exactly_the_header_however_it_arrives() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8883\r\n".to_vec();
        let mut v2 = Vec::new();
        proxy_header::ProxyHeader::with_tlvs(
            Some(proxy_header::ProxiedAddress::stream(
                "192.0.2.7:51234".parse().unwrap(),
                "198.51.100.1:8883".parse().unwrap(),
            )),
            [proxy_header::Tlv::Custom(0xEA, (&[1u8; 300][..]).into())],
        )
        .encode_v2(&mut v2)
        .unwrap();
        let after = b"\x16\x03\x01\x00\x05hello";
        let mut runs = 0;
        for header in [&v1, &v2] {
            for piece in [1, 5, 13, 16, 200, 4096] {
                let (mut client, mut server) = pair().await;
                let sent = [header.as_slice(), after].concat();
                let writer = tokio::spawn(async move {
                    for chunk in sent.chunks(piece) {
                        client.write_all(chunk).await.unwrap();
                        client.flush().await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    client
                });
                let got = read_header(&server).await.unwrap();
                assert_eq!(got.as_deref(), Some(header.as_slice()), "pieces of {piece}");
                let mut rest = vec![0u8; after.len()];
                server.read_exact(&mut rest).await.unwrap();
                assert_eq!(rest, after);
                drop(writer.await.unwrap());
                runs += 1;
            }
        }
        assert_eq!(runs, 12);
    }

    #[tokio::test]
    async fn no_header_consumes_nothing_and_bad_ones_are_refused() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"\x16\x03\x01\x00\x05hello")
            .await
            .unwrap();
        assert!(matches!(read_header(&server).await, Ok(None)));
        let mut first = [0u8; 3];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"\x16\x03\x01", "nothing consumed");

        let (mut client, server) = pair().await;
        let endless = [inbound::V1_SIGNATURE, &[b'1'; 200][..]].concat();
        client.write_all(&endless).await.unwrap();
        assert!(matches!(
            read_header(&server).await,
            Err(Failed::Invalid(_))
        ));

        let (mut client, server) = pair().await;
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        drop(client);
        assert!(matches!(read_header(&server).await, Err(Failed::Closed)));
    }
}
