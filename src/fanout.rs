//! Fan-out: a [`Room`] whose members each publish messages to all the others, with the
//! slow-reader rule that keeps readers that keep up connected and bounds what a reader that
//! does not can cost.
//!
//! # The rule: backpressure with a stall limit
//!
//! - Each member's queue may hold its connection's high write watermark
//!   ([`Server::write_watermarks`](crate::Server::write_watermarks)). A message that finds a
//!   member's queue full, or fills it, pauses the *publisher*: it reads nothing more from its
//!   client (whose writes wait in TCP) until every such member has read its queue down to the
//!   low watermark. The message reaches each member, in order; nothing is dropped. A fast
//!   publisher thus goes at the pace of the room's readers, and a member that reads steadily
//!   is never disconnected because another publishes fast.
//! - A member that holds a publisher paused for the room's stall timeout without reading its
//!   queue down is disconnected (reset; logged; counted by [`Room::dropped_slow`]; its own
//!   close reason is [`SlowConsumer`](crate::CloseReason::SlowConsumer), `slow-consumer`),
//!   and the publisher goes on. A member that never reads thus costs
//!   at most the high watermark plus one message per publisher, and stalls the room for at
//!   most the stall timeout.
//!
//! # Under the memory budget
//!
//! Every message becomes one queued copy per member, so a room of silent members is what
//! fills memory under a fast talker (200 of them took `chat_server` past a 64 MiB cgroup in
//! 0.4 s: the copies reach the budget's count only when each member's IO thread takes them).
//! The room therefore counts what its members hold itself (their handles' backlogs, exact at
//! once) on top of the budget's charge: once that reaches the budget's
//! [`Pause`](crate::budget::Pressure::Pause) level, a message for a member that still holds
//! anything waits for it instead of being queued ([`Room::budget_waits`]), and the publisher
//! pauses under the rule above: the member is written to when it has read everything or the
//! pressure falls (looked at again every [`BUDGET_RETRY`]), or is disconnected at the stall
//! timeout. A member holding nothing still gets the message, so readers that keep up keep
//! reading. Members' queues are charged to the budget through their connections, so the
//! engine's resets at the top pick the largest of them.
//!
//! # Use
//!
//! Each connection's handler holds a [`Member`] ([`Room::join`] in `on_open`), calls
//! [`Member::publish`] for each message, and hands its
//! [`Handler::on_writable`](crate::Handler::on_writable) and
//! [`Handler::on_timer`](crate::Handler::on_timer) calls to the member first. Dropping the
//! member (with the handler, when the connection closes) leaves the room.
//!
//! [`Member::publish`] returns how many members the message went to. A connection that
//! publishes without receiving uses a [`Room::publisher`] (a member not in the room). For
//! pub/sub, [`Topics`] keeps a room per topic: [`Topics::join`] makes a topic's room with its
//! first member, the room is dropped when its last member leaves, and
//! [`Topics::publisher`] publishes to a topic (`examples/pubsub_server.rs`).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use ringport::codec::Lines;
//! use ringport::fanout::{Member, Room};
//! use ringport::{Conn, Frame, Handler, Server};
//!
//! struct Chat { room: Arc<Room>, member: Option<Member> }
//!
//! impl Handler for Chat {
//!     fn on_open(&mut self, conn: &mut Conn<'_>) {
//!         self.member = Some(self.room.join(conn));
//!     }
//!     fn on_frame(&mut self, conn: &mut Conn<'_>, frame: Frame<'_>) {
//!         let mut line = frame.payload().to_vec();
//!         line.extend_from_slice(b"\r\n");
//!         if let Some(m) = &mut self.member {
//!             m.publish(conn, line);
//!         }
//!     }
//!     fn on_writable(&mut self, conn: &mut Conn<'_>, value: u64) {
//!         if let Some(m) = &mut self.member {
//!             m.on_writable(conn, value);
//!         }
//!     }
//!     fn on_timer(&mut self, conn: &mut Conn<'_>, id: u64) {
//!         if let Some(m) = &mut self.member {
//!             m.on_timer(conn, id);
//!         }
//!     }
//! }
//!
//! let room = Arc::new(Room::new(Duration::from_secs(5)));
//! let server = Server::new("127.0.0.1:0".parse()?, Lines::new(4096), move |_| Chat {
//!     room: room.clone(),
//!     member: None,
//! })
//! .write_watermarks(256 << 10, 1 << 20); // what one member may have waiting
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use crate::budget::{Budget, Pressure};
use crate::conn::Conn;
use crate::handle::{ConnectionHandle, HandleError};

/// The timer id a [`Member`] arms on its connection while a publish waits for slow members
/// (reserved: a handler with timers of its own uses other ids).
pub const STALL_TIMER: u64 = u64::MAX - 0xfa;

/// The timer id a [`Member`] arms while a publish waits for the memory budget (reserved).
pub const BUDGET_TIMER: u64 = u64::MAX - 0xfb;

/// How often a publish waiting for the memory budget looks again.
pub const BUDGET_RETRY: Duration = Duration::from_millis(50);

/// The members of one fan-out group, shared by the IO threads (`Arc<Room>`).
pub struct Room {
    members: RwLock<HashMap<u64, Entry>>,
    stall_timeout: Duration,
    dropped_slow: AtomicU64,
    /// Messages held back for the memory budget (each then waits for its member).
    budget_waits: AtomicU64,
    /// For a room of [`Topics`]: the map it is in, and its key there (it leaves the map
    /// with its last member).
    home: Option<(Weak<RoomMap>, Box<[u8]>)>,
}

#[derive(Clone)]
struct Entry {
    handle: ConnectionHandle,
    /// Set once by whoever disconnects it for not reading (so it is counted once).
    evicted: Arc<AtomicBool>,
}

/// A member a publisher waits for: the message did not fit in its queue (`unsent`), or
/// filled it.
struct Blocking {
    id: u64,
    entry: Entry,
    unsent: Option<Arc<[u8]>>,
    /// `unsent` waits for the memory budget (tried again by [`BUDGET_TIMER`]), not for the
    /// member's queue to go down (its watch).
    for_budget: bool,
}

impl Room {
    /// An empty room whose members may hold a publisher up for `stall_timeout` at most.
    pub fn new(stall_timeout: Duration) -> Room {
        Room {
            members: RwLock::new(HashMap::new()),
            stall_timeout,
            dropped_slow: AtomicU64::new(0),
            budget_waits: AtomicU64::new(0),
            home: None,
        }
    }

    /// Adds `conn` (keyed by its `info().id`); the returned member leaves when dropped.
    pub fn join(self: &Arc<Room>, conn: &mut Conn<'_>) -> Member {
        let id = conn.info().id;
        let handle = conn.handle();
        let entry = Entry {
            handle: handle.clone(),
            evicted: Arc::default(),
        };
        self.write_members().insert(id, entry);
        Member {
            room: self.clone(),
            id,
            me: handle,
            joined: true,
            blocking: Vec::new(),
            budget: conn.budget().clone(),
            retry_armed: false,
        }
    }

    /// A publisher that is not a member: it sends to the room (every member but `conn`, if
    /// `conn` also joined) under the same rule, and receives nothing; dropping it leaves no
    /// room (e.g. a pub/sub `PUB` to a topic the client has not subscribed to).
    pub fn publisher(self: &Arc<Room>, conn: &mut Conn<'_>) -> Member {
        Member {
            room: self.clone(),
            id: conn.info().id,
            me: conn.handle(),
            joined: false,
            blocking: Vec::new(),
            budget: conn.budget().clone(),
            retry_armed: false,
        }
    }

    /// Members in the room now.
    pub fn len(&self) -> usize {
        self.read_members().len()
    }

    /// Whether the room has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Members disconnected so far for holding a publisher up past the stall timeout.
    pub fn dropped_slow(&self) -> u64 {
        self.dropped_slow.load(Ordering::Relaxed)
    }

    /// Messages held back so far for the memory budget: each waited for its member to read
    /// what it held (or for the pressure to fall), or for its disconnection at the stall
    /// timeout; none is dropped.
    pub fn budget_waits(&self) -> u64 {
        self.budget_waits.load(Ordering::Relaxed)
    }

    /// The stall timeout the room was made with.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// What the members hold now (exact: the budget counts it only once their IO threads
    /// take it).
    fn hold(members: &HashMap<u64, Entry>) -> usize {
        members.values().map(|m| m.handle.queued_bytes()).sum()
    }

    fn read_members(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Entry>> {
        self.members.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_members(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Entry>> {
        self.members.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `msg` to everyone but `from`: how many members it was queued for or waits for,
    /// and the members whose queue it found full or filled, or that must wait for the budget.
    fn broadcast(&self, from: u64, msg: &Arc<[u8]>, budget: &Budget) -> (usize, Vec<Blocking>) {
        let members = self.read_members();
        // What the members hold now, exact (the budget counts it only once their IO threads
        // take it), on top of the budget's charge: counted twice in part, so the room waits
        // a little early rather than late.
        let mut held = budget.used() + Self::hold(&members);
        let (mut sent, mut blocking) = (0, Vec::new());
        for (&id, m) in members.iter().filter(|(id, _)| **id != from) {
            if budget_wait(budget, m.handle.queued_bytes(), held + msg.len()) {
                self.budget_waits.fetch_add(1, Ordering::Relaxed);
                sent += 1;
                blocking.push(Blocking {
                    id,
                    entry: m.clone(),
                    unsent: Some(msg.clone()),
                    for_budget: true,
                });
                continue;
            }
            held += msg.len();
            let unsent = match m.handle.write(&msg[..]) {
                Ok(()) if m.handle.is_writable() => {
                    sent += 1;
                    continue;
                }
                Ok(()) => None,
                Err(HandleError::Full) => Some(msg.clone()),
                Err(HandleError::Closed | HandleError::EngineStopped) => continue,
            };
            sent += 1;
            blocking.push(Blocking {
                id,
                entry: m.clone(),
                unsent,
                for_budget: false,
            });
        }
        debug_assert!(blocking.len() <= sent);
        (sent, blocking)
    }

    /// Leaves the [`Topics`] map this room is in if it has no member (after a member left).
    fn leave_home_if_empty(self: &Arc<Room>) {
        let Some((map, key)) = &self.home else { return };
        let Some(map) = map.upgrade() else { return };
        // Under the map's lock, as `Topics::join` joins: no one joins a room being dropped.
        let mut rooms = lock(&map);
        if self.is_empty() && rooms.get(key).is_some_and(|r| Arc::ptr_eq(r, self)) {
            rooms.remove(key);
        }
    }

    /// Disconnects a member that held a publisher up for the whole stall timeout.
    fn evict(&self, b: &Blocking) {
        if !b.entry.evicted.swap(true, Ordering::AcqRel) {
            let n = self.dropped_slow.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                member = b.id,
                queued = b.entry.handle.queued_bytes(),
                stall_timeout_secs = self.stall_timeout.as_secs_f64(),
                dropped_slow = n,
                "fan-out member does not read; disconnecting it"
            );
        }
        let _ = b.entry.handle.abort_slow();
    }
}

/// One connection's membership of a [`Room`]: publishes, and holds what its publishes wait
/// for. Leaves the room when dropped.
pub struct Member {
    room: Arc<Room>,
    id: u64,
    /// This connection's own handle (the watcher in `notify_when_writable`).
    me: ConnectionHandle,
    /// In the room's members ([`Room::join`]), not a mere [`Room::publisher`].
    joined: bool,
    /// Members this publisher waits for, its reading paused (empty: reading).
    blocking: Vec<Blocking>,
    /// The engine's memory budget.
    budget: Budget,
    /// [`BUDGET_TIMER`] is armed.
    retry_armed: bool,
}

/// Whether a message for a member holding `member_holds` bytes waits for the budget, the
/// room's members and the budget holding `held` bytes with it.
fn budget_wait(budget: &Budget, member_holds: usize, held: usize) -> bool {
    member_holds > 0 && Pressure::of(held, budget.limit()) >= Pressure::Pause
}

impl Member {
    /// The member's id (its connection's `info().id`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether a publish waits for slow members (reading is paused meanwhile).
    pub fn is_waiting(&self) -> bool {
        !self.blocking.is_empty()
    }

    /// Sends `msg` to every other member of the room. Where it finds a member's queue full or
    /// fills it, this connection stops reading until each such member has read its queue down
    /// (or left), or is disconnected when the stall timeout passes first. Returns how many
    /// members it went to (queued now, or waited for under that rule).
    ///
    /// Call it only while not [`is_waiting`](Member::is_waiting) (no frame arrives while
    /// reading is paused, so from `on_frame` it always holds).
    pub fn publish(&mut self, conn: &mut Conn<'_>, msg: impl Into<Arc<[u8]>>) -> usize {
        debug_assert!(
            self.blocking.is_empty(),
            "a publish while the previous one waits"
        );
        let msg = msg.into();
        let (sent, mut blocking) = self.room.broadcast(self.id, &msg, &self.budget);
        if blocking.is_empty() {
            return sent;
        }
        if !self.blocking.is_empty() {
            // Misuse in a release build: wait for both; the stall timer is re-armed.
            blocking.append(&mut self.blocking);
        }
        self.blocking = blocking;
        conn.pause_reading();
        conn.set_timer(STALL_TIMER, self.room.stall_timeout);
        for b in &self.blocking {
            if b.for_budget {
                self.retry_armed = true;
            } else {
                b.entry.handle.notify_when_writable(&self.me, b.id);
            }
        }
        if self.retry_armed {
            conn.set_timer(BUDGET_TIMER, BUDGET_RETRY);
        }
        sent
    }

    /// Hand every [`Handler::on_writable`](crate::Handler::on_writable) call here first:
    /// `true` if it was about a member this one waits for (`value` is that member's id).
    pub fn on_writable(&mut self, conn: &mut Conn<'_>, value: u64) -> bool {
        let Some(i) = self.blocking.iter().position(|b| b.id == value) else {
            return false; // not ours, or an older watch of a member no longer waited for
        };
        if self.retry(i) {
            self.blocking.swap_remove(i);
        }
        self.after_retry(conn);
        true
    }

    /// Tries the member `blocking[i]` again: `true` once it no longer holds this publisher
    /// up. Waiting for the budget, it is looked at again by [`BUDGET_TIMER`]; otherwise when
    /// its queue is back under the low watermark.
    fn retry(&mut self, i: usize) -> bool {
        let b = &mut self.blocking[i];
        let h = &b.entry.handle;
        if let Some(msg) = &b.unsent {
            // The same count as the first try: the budget's charge plus what the whole room
            // holds (not only this member: 200 members each under the line held 27 MiB of a
            // 24 MiB budget between them).
            let held = self.budget.used() + Room::hold(&self.room.read_members()) + msg.len();
            if h.is_open() && budget_wait(&self.budget, h.queued_bytes(), held) {
                b.for_budget = true;
                self.retry_armed = true;
                return false; // `after_retry` arms the timer
            }
            b.for_budget = false;
            match h.write(&msg[..]) {
                Ok(()) => b.unsent = None,
                Err(HandleError::Full) => {}
                Err(HandleError::Closed | HandleError::EngineStopped) => b.unsent = None,
            }
        }
        if b.unsent.is_none() && (h.is_writable() || !h.is_open()) {
            return true;
        }
        h.notify_when_writable(&self.me, b.id);
        false
    }

    /// After members were tried again: reading resumes when none holds this publisher up;
    /// the budget's retry timer runs while one waits for the budget.
    fn after_retry(&mut self, conn: &mut Conn<'_>) {
        if self.blocking.is_empty() {
            conn.cancel_timer(STALL_TIMER);
            conn.cancel_timer(BUDGET_TIMER);
            self.retry_armed = false;
            conn.resume_reading();
        } else if self.retry_armed {
            conn.set_timer(BUDGET_TIMER, BUDGET_RETRY);
        }
    }

    /// Hand every [`Handler::on_timer`](crate::Handler::on_timer) call here first: `true` if
    /// it was the stall timer ([`STALL_TIMER`]); the members still holding this publisher up
    /// are disconnected, and reading resumes.
    pub fn on_timer(&mut self, conn: &mut Conn<'_>, id: u64) -> bool {
        if id == BUDGET_TIMER {
            // The members waiting for the budget are tried again (the others wait for their
            // queue to go down: a retry re-registers their watch, which is harmless).
            self.retry_armed = false;
            let mut i = 0;
            while i < self.blocking.len() {
                if self.blocking[i].for_budget && self.retry(i) {
                    self.blocking.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            self.after_retry(conn);
            return true;
        }
        if id != STALL_TIMER {
            return false;
        }
        for b in std::mem::take(&mut self.blocking) {
            self.room.evict(&b);
        }
        conn.cancel_timer(BUDGET_TIMER);
        self.retry_armed = false;
        conn.resume_reading();
        true
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.joined {
            self.room.write_members().remove(&self.id);
            self.room.leave_home_if_empty();
        }
    }
}

type RoomMap = Mutex<HashMap<Box<[u8]>, Arc<Room>>>;

fn lock(map: &RoomMap) -> MutexGuard<'_, HashMap<Box<[u8]>, Arc<Room>>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rooms by topic (a pub/sub broker's): a topic's room is made when its first member joins
/// and dropped when its last member leaves, so the map holds only topics with members.
/// Shared by the IO threads (`Arc<Topics>`); each room follows the slow-reader rule above.
pub struct Topics {
    rooms: Arc<RoomMap>,
    stall_timeout: Duration,
}

impl Topics {
    /// No topics yet; every room made will have this stall timeout.
    pub fn new(stall_timeout: Duration) -> Topics {
        Topics {
            rooms: Arc::default(),
            stall_timeout,
        }
    }

    /// Joins `topic`'s room (made if it has none). The member leaves when dropped, and the
    /// room goes with its last member. A connection joins a topic once (joining it again
    /// replaces its entry, and the first member's drop then takes it out).
    pub fn join(&self, topic: &[u8], conn: &mut Conn<'_>) -> Member {
        let mut rooms = lock(&self.rooms);
        let room = rooms.entry(topic.into()).or_insert_with(|| {
            Arc::new(Room {
                home: Some((Arc::downgrade(&self.rooms), topic.into())),
                ..Room::new(self.stall_timeout)
            })
        });
        room.join(conn) // under the map's lock (see `Room::leave_home_if_empty`)
    }

    /// A [`Room::publisher`] for `topic`'s room; `None` if the topic has no member.
    pub fn publisher(&self, topic: &[u8], conn: &mut Conn<'_>) -> Option<Member> {
        let room = lock(&self.rooms).get(topic).cloned();
        room.map(|room| room.publisher(conn))
    }

    /// Topics with members now.
    pub fn len(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// Whether no topic has a member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members of `topic` now (0 if it has none).
    pub fn members(&self, topic: &[u8]) -> usize {
        lock(&self.rooms).get(topic).map_or(0, |room| room.len())
    }
}
