//! large_packet_echo_server: small IO buffers; frames larger than one buffer are assembled into
//! transfer buffers and echoed by a worker pool. (Use this design almost never: it exists to
//! show how to keep big, rare frames off the IO threads with bounded memory.)
//!
//! Framing and flags are packet_echo_server's, plus `--io-buffer` (the receive size the IO
//! threads use, default 1024). A frame that fits in one IO buffer is echoed on the IO thread.
//! A larger one is assembled by the engine in the connection's input buffer, copied into a
//! transfer buffer from a bounded [`BufferPool`], and echoed by a worker. Echo order per
//! connection holds across both paths: while a connection has a job in flight, its small frames
//! queue behind it on the same [`Ordered`] queue. No transfer buffer, or no room in the worker
//! queue, means backpressure: the connection stops reading until there is.

use std::time::Duration;

use clap::Parser;
use ringport::cli;
use ringport::pool::{BufferPool, Ordered, WorkerPool};
use ringport::{Conn, Frame, Handler, Server, Work};

#[derive(Parser, Debug)]
#[command(about = "ringport large packet echo server: big frames echoed by a worker pool")]
struct Args {
    /// IP:PORT (port 0: any free port) or unix:PATH (a Unix domain socket) to listen on
    #[arg(long, default_value = "127.0.0.1:5005")]
    listen: String,
    /// Receive size of the IO threads, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    io_buffer: usize,
    /// Largest payload accepted, in bytes; a bigger announced length closes the connection
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    max_frame: usize,
    #[command(flatten)]
    layout: cli::LengthFieldArgs,
    /// Worker threads echoing large frames
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Transfer buffers (each max-frame + header bytes); all in use means backpressure
    #[arg(long, default_value_t = 256)]
    transfer_buffers: usize,
    #[command(flatten)]
    server: cli::ServerArgs,
}

struct Session {
    pool: WorkerPool,
    buffers: BufferPool,
    jobs: Ordered,
    io_buffer: usize,
}

impl Handler for Session {
    fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
        let raw = frame.raw();
        if raw.len() <= self.io_buffer && conn.outstanding_work() == 0 {
            conn.write(raw); // small, and nothing ahead of it: echo on the IO thread
            return;
        }
        // Large (or queued behind a large one): a transfer buffer, then a worker.
        let Some(mut buf) = self.buffers.try_get() else {
            conn.hold_frame(); // every transfer buffer is in use: stop reading for now
            return;
        };
        buf.extend_from_slice(raw);
        // The job's `Work` is outstanding until the job drops it: no close overtakes it.
        let job = move |work: Work| {
            let _ = work.write(&buf[..]); // the echo; `buf` returns to its pool when dropped
        };
        if self.jobs.submit_work(&self.pool, conn, job).is_err() {
            conn.hold_frame(); // worker queue full (the buffer went back with the job)
        }
    }
    // The defaults of `on_read_closed`, `on_decode_error` and `on_shutdown` close gracefully,
    // which waits for every outstanding job's echo first.
}

fn main() {
    let args = Args::parse();
    let codec = args.layout.codec(args.max_frame);
    let frame_bytes = args.max_frame + codec.header_len();
    let mut engine = args
        .server
        .engine_with(|b| b.recv_buffer_size(args.io_buffer));
    let pool =
        WorkerPool::new("ringport-worker", args.workers, 1024).unwrap_or_else(|e| cli::fail(e));
    let buffers = BufferPool::new(args.transfer_buffers, frame_bytes).with_budget(engine.budget());
    let (p, b, io_buffer) = (pool.clone(), buffers.clone(), args.io_buffer);
    let server = Server::listen(cli::listen_addr(&args.listen), codec, move |_| Session {
        pool: p.clone(),
        buffers: b.clone(),
        jobs: Ordered::new(64),
        io_buffer,
    })
    // A frame is assembled in the connection's input buffer: bound it to one frame + one read.
    .max_buffered_input(frame_bytes + args.io_buffer);
    let server = args.server.add(&mut engine, server);
    cli::run(engine, &[&server]);
    pool.shutdown(Duration::from_millis(200));
}
