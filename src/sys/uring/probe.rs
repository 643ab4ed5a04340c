//! Ring setup (with the flags chosen by the tuning switches) and the probe that tells whether
//! this kernel can run the backend at all.

use std::io;

use io_uring::{opcode, IoUring, Probe};

use super::bufring::BufRing;
use super::tuning::{tuning, Setup};
use super::{BackendConfig, BGID};

/// Sets up a ring, best flags first (see [`Setup`]); falls back to fewer flags on older kernels.
pub(super) fn build_ring(entries: u32) -> io::Result<IoUring> {
    let t = tuning();
    let cq = entries.saturating_mul(t.cq_factor).max(entries);
    let mut best = IoUring::builder();
    best.setup_cqsize(cq);
    match t.setup {
        Setup::Defer => best.setup_single_issuer().setup_defer_taskrun(),
        Setup::Coop => best.setup_coop_taskrun().setup_taskrun_flag(),
        Setup::Single => best.setup_single_issuer(),
        Setup::Plain => &mut best,
    };
    let mut coop = IoUring::builder();
    coop.setup_coop_taskrun().setup_cqsize(cq);
    let mut plain = IoUring::builder();
    plain.setup_cqsize(cq);
    let first = best.build(entries);
    match t.setup {
        Setup::Defer => first
            .or_else(|_| coop.build(entries))
            .or_else(|_| plain.build(entries)),
        _ => first.or_else(|_| plain.build(entries)),
    }
}

/// Whether the kernel can run this backend; `Err` holds a short human reason.
pub(crate) fn probe(config: &BackendConfig) -> Result<(), String> {
    let ring = build_ring(config.ring_entries).map_err(|e| {
        format!("io_uring_setup failed: {e} (seccomp or kernel.io_uring_disabled?)")
    })?;
    check_features(&ring)?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let ops = [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
        (opcode::Connect::CODE, "IORING_OP_CONNECT"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Read::CODE, "IORING_OP_READ"),
        // Multishot recv (6.0) has no opcode of its own; SEND_ZC arrived in the same release,
        // so its presence is the cheapest marker that RecvMulti works.
        (
            opcode::SendZc::CODE,
            "IORING_OP_SEND_ZC (marker for multishot recv, 6.0+)",
        ),
    ];
    for (code, name) in ops {
        if !probe.is_supported(code) {
            return Err(format!("kernel lacks {name}"));
        }
    }
    let mut bufs = BufRing::new(config.recv_buffer_count, config.recv_buffer_size)
        .map_err(|e| format!("provided-buffer ring: {e}"))?;
    bufs.register(&ring, false)
        .map_err(|e| format!("registering a provided-buffer ring failed: {e} (needs 5.19+)"))?;
    let _ = ring.submitter().unregister_buf_ring(BGID);
    Ok(())
}

pub(super) fn check_features(ring: &IoUring) -> Result<(), String> {
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (wait with timeout, 5.11+)".into());
    }
    if !ring.params().is_feature_nodrop() {
        return Err("kernel lacks IORING_FEAT_NODROP (5.5+)".into());
    }
    Ok(())
}
