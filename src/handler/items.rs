//! Typed frames on the handler side: [`ItemHandler`] receives what an
//! [`ItemDecoder`](crate::codec::ItemDecoder) parsed, and the bad frames it skipped; `Items`
//! drives the two for the engine.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{decode_failed, forward_callbacks, guarded, Handler};
use crate::codec::{BadFrame, Decode, ItemDecoder};
use crate::conn::Conn;
use crate::core::{ConnCore, DynConn, ThreadCtx, Token};
use crate::info::{CloseReason, ConnInfo};

/// A [`Handler`] that receives typed items from its decoder `D` (serve it with
/// [`Server::typed`](crate::Server::typed)). Its `on_frame` is never called: leave it out.
///
/// ```
/// # use ringport::{codec::{Bytes, Lines}, Conn, Handler, ItemHandler};
/// struct Upper;
/// impl Handler for Upper {}
/// impl ItemHandler<Bytes<Lines>> for Upper {
///     fn on_item(&mut self, conn: &mut Conn<'_>, line: &[u8]) {
///         conn.write(&line.to_ascii_uppercase());
///         conn.write(b"\r\n");
///     }
/// }
/// ```
pub trait ItemHandler<D: ItemDecoder>: Handler {
    /// A complete frame arrived, parsed. Items of one connection arrive in order; what they
    /// borrow lives only for this call.
    fn on_item(&mut self, conn: &mut Conn<'_>, item: D::Item<'_>);

    /// The decoder skipped a bad frame ([`Decode::Bad`]); the connection goes on with the
    /// next one. Called in order with the items, so its reply takes the frame's place.
    /// `raw` is the part of the bad frame already received (at most `bad.skip` bytes; its
    /// start, e.g. a header line, says what it was). Default: write `bad.reply`.
    fn on_bad_frame(&mut self, conn: &mut Conn<'_>, bad: &BadFrame, raw: &[u8]) {
        let _ = raw;
        conn.write(bad.reply);
    }
}

/// A typed handler and its decoder, driven through [`DynConn`].
pub(crate) struct Items<H, D> {
    handler: H,
    codec: D,
    poisoned: bool,
    /// The handler held back the frame at the start of the input: it is decoded again, not
    /// counted again.
    held: bool,
    /// Bytes of a bad frame still to drop as they arrive (a body over the limit).
    discard: u64,
}

impl<H: ItemHandler<D>, D: ItemDecoder> Items<H, D> {
    pub(crate) fn new(handler: H, codec: D) -> Self {
        Items {
            handler,
            codec,
            poisoned: false,
            held: false,
            discard: 0,
        }
    }

    fn guard(
        &mut self,
        core: &mut ConnCore,
        ctx: &mut ThreadCtx,
        token: Token,
        f: impl FnOnce(&mut H, &mut Conn<'_>),
    ) {
        let encoder = self.codec.encoder();
        guarded(
            &mut self.handler,
            &mut self.poisoned,
            encoder,
            (core, ctx, token),
            f,
        );
    }
}

impl<H: ItemHandler<D>, D: ItemDecoder> DynConn for Items<H, D> {
    fn data(
        &mut self,
        core: &mut ConnCore,
        ctx: &mut ThreadCtx,
        token: Token,
        data: &[u8],
    ) -> usize {
        let mut pos = 0;
        while pos < data.len() && core.wants_frames() && !self.poisoned {
            if self.discard > 0 {
                let n = self.discard.min((data.len() - pos) as u64);
                self.discard -= n;
                pos += n as usize; // n <= data.len() - pos
                continue;
            }
            let again = std::mem::take(&mut self.held);
            debug_assert!(
                !again || pos == 0,
                "a held frame is the start of the next input"
            );
            match self.codec.decode_item(&data[pos..]) {
                Ok(Decode::Incomplete) => break,
                Ok(Decode::Frame { consumed, item }) => {
                    if consumed == 0 || consumed > data.len() - pos {
                        break; // a decoder bug; never loop or index out of bounds on it
                    }
                    if !again {
                        ctx.stats(core.server).frames_in.add(1);
                    }
                    self.guard(core, ctx, token, |h, c| h.on_item(c, item));
                    if core.m.held() || self.poisoned {
                        self.held = core.m.held() && !self.poisoned;
                        break;
                    }
                    pos += consumed;
                }
                Ok(Decode::Bad(bad)) => {
                    if bad.skip == 0 {
                        break; // a decoder bug, as above
                    }
                    ctx.stats(core.server).bad_frames.add(1);
                    tracing::debug!(peer = %core.info.peer, reason = %bad.reason, skip = bad.skip, "bad frame skipped");
                    let n = bad.skip.min((data.len() - pos) as u64);
                    let raw = &data[pos..pos + n as usize];
                    self.guard(core, ctx, token, |h, c| h.on_bad_frame(c, &bad, raw));
                    pos += n as usize;
                    self.discard = bad.skip - n;
                }
                Err(error) => {
                    decode_failed(core, ctx, &error);
                    self.guard(core, ctx, token, |h, c| h.on_decode_error(c, &error));
                    return data.len();
                }
            }
        }
        pos
    }

    forward_callbacks!();
}
