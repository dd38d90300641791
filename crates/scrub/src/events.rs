//! Scrubbing across the events of a stream (A3): server-sent events, NDJSON lines, WebSocket
//! messages. A secret that a model repeats reaches the client in pieces, one per event, in
//! whatever field the API streams text in; the client concatenates that field, so the secret
//! is whole only in its view. Byte-level scrubbing cannot see it; this stage can.
//!
//! Each event's data is parsed (JSON, else taken as one piece of text or bytes), and every
//! string in it belongs to a *channel*: its JSON path (array indices included). For every
//! channel the stage scrubs the concatenation of its values across events, with two policies:
//!
//! * **Text channels** — the paths where the known streaming APIs put generated text
//!   (Anthropic `delta.text`, OpenAI `choices.N.delta.content`, Gemini
//!   `candidates.N.content.parts.N.text`, Ollama `response`, …): a streaming scrubber per
//!   channel holds back a possible pattern prefix and moves it into the channel's next value,
//!   so no byte of a secret is ever emitted and no event is delayed. Text still held when the
//!   channel ends is sent as one more event, built from the channel's last event, just before
//!   the event that ends it.
//! * **Every other string, and non-JSON data** (plain-text events, binary messages, layouts
//!   nobody has heard of) — values are never moved between events (a field like `model` must
//!   stay intact), so an event whose value ends in at least [`HOLD_MIN`] bytes that could start
//!   a pattern is *held* until the next event that carries the same channel shows whether the
//!   pattern completes. If it does, the match is replaced where it starts (in the held event)
//!   and removed from the next; if not, both go out unchanged. A shorter possible prefix is
//!   not held (that would delay most events), so a secret split within its first
//!   `HOLD_MIN - 1` bytes lets those bytes through — never the rest, which is replaced when
//!   the channel continues. Held events keep their order with everything after them; the
//!   queue is bounded ([`MAX_HELD_EVENTS`], [`MAX_HELD_BYTES`]): past it the oldest event is
//!   released, and the rest of a pattern that then completes is still replaced.
//!
//! Events whose strings hold no secret pass through byte for byte; changed events are
//! re-serialised by the framing. An event larger than [`MAX_EVENT`] is an error: the stream
//! must then fail, since it cannot be scrubbed across events (A5: no size turns scrubbing
//! off).

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::scrub::ScrubPatterns;

/// The largest event (SSE event, NDJSON line, WebSocket message) the stage accepts.
pub const MAX_EVENT: usize = 16 << 20;
/// A value that ends in at least this many bytes of a possible pattern is held.
pub const HOLD_MIN: usize = 4;
/// At most this many events wait behind a held one before the oldest is released.
pub const MAX_HELD_EVENTS: usize = 64;
/// At most this many bytes of events wait before the oldest is released.
pub const MAX_HELD_BYTES: usize = 16 << 20;

/// An event too large to scrub across events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event of the stream exceeds {limit} bytes; it cannot be scrubbed across events, so the stream is cut")]
pub struct EventTooLarge {
    pub limit: usize,
}

/// What an event's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Parsed as JSON if it is JSON, else text.
    MaybeJson,
    /// Opaque bytes (binary WebSocket messages).
    Binary,
}

/// An event's data after parsing.
#[derive(Debug, Clone)]
pub(crate) enum Data {
    Json(Value),
    Bytes(Vec<u8>),
}

/// An event the framing must write out: its original bytes when nothing changed, else its
/// metadata and new data to render.
#[derive(Debug)]
pub(crate) enum Out<M> {
    Raw(M, Vec<u8>),
    Render(M, Data),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Whether a JSON path (dot-separated, indices as numbers) is where a known streaming API
/// puts generated text, so that its values are deltas that clients concatenate.
fn is_text_path(path: &str) -> bool {
    let tail = path.rsplit_once('.').map_or(path, |(_, t)| t);
    matches!(
        path,
        "delta.text"
            | "delta.partial_json"
            | "delta.thinking"
            | "delta.content"
            | "delta"
            | "text"
            | "completion"
            | "response"
            | "message.content"
            | "delta.message.content.text"
    ) || (path.starts_with("choices.")
        && (path.ends_with(".delta.content")
            || path.ends_with(".delta.reasoning_content")
            || path.ends_with(".delta.refusal")
            || path.ends_with(".function.arguments")
            || path.ends_with(".text")))
        || (path.starts_with("candidates.") && path.contains(".content.parts.") && tail == "text")
        || (path.starts_with("delta.") && tail == "text")
}

struct MoveChannel<M> {
    /// Sent bytes at the end of the channel's text that may start a pattern (after a flush):
    /// if the channel resumes and completes it, the rest is replaced.
    emitted: Vec<u8>,
    /// Held back: a possible pattern prefix (and an incomplete UTF-8 character), moved into
    /// the channel's next value.
    carry: Vec<u8>,
    /// The channel's last event, to build a flush event from.
    template: Option<(M, Value)>,
    path: Vec<Seg>,
    open: bool,
}

/// A piece of a hold channel's carried suffix: the last `bytes.len()` bytes of event `seq`'s
/// value on that channel.
#[derive(Debug, Clone)]
struct Piece {
    seq: u64,
    bytes: Vec<u8>,
}

struct HoldChannel {
    path: Option<Vec<Seg>>,
    /// The suffix of the channel's concatenation that may start a pattern (no final match in
    /// it), oldest piece first.
    tail: Vec<Piece>,
}

impl HoldChannel {
    fn tail_len(&self) -> usize {
        self.tail.iter().map(|p| p.bytes.len()).sum()
    }

    /// Whether event `seq` must wait for this channel's next value.
    fn holds(&self, seq: u64) -> bool {
        self.tail_len() >= HOLD_MIN && self.tail.iter().any(|p| p.seq == seq)
    }
}

struct Pending<M> {
    seq: u64,
    meta: M,
    raw: Vec<u8>,
    data: Data,
    changed: bool,
}

/// The framing-independent stage; `M` is what the framing needs to render an event.
pub(crate) struct EventCore<M> {
    patterns: ScrubPatterns,
    moves: HashMap<String, MoveChannel<M>>,
    /// Move channel keys in creation order, so flushes are deterministic.
    move_order: Vec<String>,
    holds: HashMap<String, HoldChannel>,
    queue: VecDeque<Pending<M>>,
    queued_bytes: usize,
    next_seq: u64,
    count: usize,
    released: usize,
}

impl<M: Clone> EventCore<M> {
    pub(crate) fn new(patterns: ScrubPatterns) -> EventCore<M> {
        EventCore {
            patterns,
            moves: HashMap::new(),
            move_order: Vec::new(),
            holds: HashMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_seq: 0,
            count: 0,
            released: 0,
        }
    }

    /// Replacements made so far.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Events released from the hold queue because it was full (not because a channel
    /// resolved).
    pub(crate) fn forced_releases(&self) -> usize {
        self.released
    }

    /// Events currently held.
    pub(crate) fn held(&self) -> usize {
        self.queue.len()
    }

    fn enqueue(&mut self, p: Pending<M>, out: &mut Vec<Out<M>>) {
        self.queued_bytes += p.raw.len();
        self.queue.push_back(p);
        self.release(out, false);
    }

    /// Release events from the front that no channel holds; with `all`, every event.
    fn release(&mut self, out: &mut Vec<Out<M>>, all: bool) {
        while let Some(front) = self.queue.front() {
            let seq = front.seq;
            let held = !all && self.holds.values().any(|h| h.holds(seq));
            if held {
                let over = self.queue.len() > MAX_HELD_EVENTS || self.queued_bytes > MAX_HELD_BYTES;
                if !over {
                    return;
                }
                self.released += 1;
            }
            let Some(p) = self.queue.pop_front() else {
                return;
            };
            self.queued_bytes -= p.raw.len();
            out.push(if p.changed {
                Out::Render(p.meta, p.data)
            } else {
                Out::Raw(p.meta, p.raw)
            });
        }
    }

    /// An event without data (an SSE comment, `retry:`): it only keeps its place in the order.
    pub(crate) fn push_opaque(&mut self, meta: M, raw: Vec<u8>) -> Vec<Out<M>> {
        let mut out = Vec::new();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.enqueue(
            Pending {
                seq,
                meta,
                raw,
                data: Data::Bytes(Vec::new()),
                changed: false,
            },
            &mut out,
        );
        out
    }

    /// One event: `data` is its payload, `raw` its bytes as framed (written out unchanged if
    /// nothing in it needs scrubbing), `key` the channel of non-JSON data.
    pub(crate) fn push(
        &mut self,
        meta: M,
        raw: Vec<u8>,
        data: &[u8],
        kind: Kind,
        bytes_key: &str,
    ) -> Vec<Out<M>> {
        let mut out = Vec::new();
        // Only objects and arrays are taken as JSON: a plain-text piece that happens to be a
        // JSON number or literal is still text of its channel.
        let mut data = match kind {
            Kind::MaybeJson => match serde_json::from_slice::<Value>(data) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => Data::Json(v),
                _ => Data::Bytes(data.to_vec()),
            },
            Kind::Binary => Data::Bytes(data.to_vec()),
        };
        let mut changed = false;

        // Leaves: (channel key, path) of every string.
        let mut move_keys: Vec<(String, Vec<Seg>)> = Vec::new();
        let mut hold_keys: Vec<(String, Option<Vec<Seg>>)> = Vec::new();
        let mut is_ping = false;
        match &data {
            Data::Json(v) => {
                is_ping = v.get("type").and_then(Value::as_str) == Some("ping");
                let index = v.get("index").map(|i| i.to_string()).unwrap_or_default();
                let mut leaves = Vec::new();
                collect_strings(v, &mut Vec::new(), &mut leaves);
                for p in leaves {
                    let s = path_string(&p);
                    if is_text_path(&s) {
                        move_keys.push((format!("{index}#{s}"), p));
                    } else {
                        hold_keys.push((format!("json:{s}"), Some(p)));
                    }
                }
            }
            Data::Bytes(_) => hold_keys.push((bytes_key.to_string(), None)),
        }

        // A text channel absent from this event has ended: what it still holds goes out first.
        if !is_ping {
            let ended: Vec<String> = self
                .move_order
                .iter()
                .filter(|k| {
                    self.moves.get(*k).is_some_and(|c| c.open)
                        && !move_keys.iter().any(|(key, _)| key == *k)
                })
                .cloned()
                .collect();
            for k in ended {
                if let Some(p) = self.flush_move(&k) {
                    self.enqueue(p, &mut out);
                }
            }
        }

        let seq = self.next_seq;
        self.next_seq += 1;

        // Text channels: through the channel's streaming scrubber.
        if let Data::Json(value) = &mut data {
            for (key, path) in &move_keys {
                let Some(Value::String(s)) = get_mut(value, path) else {
                    continue;
                };
                let original = std::mem::take(s);
                let channel = match self.moves.get_mut(key) {
                    Some(c) => c,
                    None => {
                        self.move_order.push(key.clone());
                        self.moves.entry(key.clone()).or_insert(MoveChannel {
                            emitted: Vec::new(),
                            carry: Vec::new(),
                            template: None,
                            path: path.clone(),
                            open: true,
                        })
                    }
                };
                channel.open = true;
                let (bytes, n) = move_step(&self.patterns, channel, original.as_bytes());
                self.count += n;
                let new = String::from_utf8(bytes).unwrap_or_default();
                if new != original {
                    changed = true;
                }
                if let Some(Value::String(s)) = get_mut(value, path) {
                    *s = new;
                }
            }
        }

        // Every other string: values stay in their event; possible prefixes hold the event.
        for (key, path) in &hold_keys {
            let w = match (&data, path) {
                (Data::Json(v), Some(p)) => match get(v, p) {
                    Some(Value::String(s)) => s.as_bytes().to_vec(),
                    _ => continue,
                },
                (Data::Bytes(b), None) => b.clone(),
                _ => continue,
            };
            if let Some(new) = self.hold_step(key, path.clone(), seq, w) {
                changed = true;
                set_value(&mut data, path.as_deref(), new);
            }
        }

        if let Data::Json(value) = &data {
            for (key, _) in &move_keys {
                if let Some(c) = self.moves.get_mut(key) {
                    c.template = Some((meta.clone(), value.clone()));
                }
            }
        }
        self.enqueue(
            Pending {
                seq,
                meta,
                raw,
                data,
                changed,
            },
            &mut out,
        );
        out
    }

    /// Scrub value `w` of event `seq` on hold channel `key` together with the channel's
    /// carried suffix. Rewrites held events when a match completes; returns `w`'s new bytes
    /// if they changed.
    fn hold_step(
        &mut self,
        key: &str,
        path: Option<Vec<Seg>>,
        seq: u64,
        w: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let channel = self
            .holds
            .entry(key.to_string())
            .or_insert_with(|| HoldChannel {
                path,
                tail: Vec::new(),
            });
        // d = carried pieces ++ w, with the owner of each range.
        let mut pieces = std::mem::take(&mut channel.tail);
        pieces.push(Piece {
            seq,
            bytes: w.clone(),
        });
        let d: Vec<u8> = pieces
            .iter()
            .flat_map(|p| p.bytes.iter().copied())
            .collect();
        let (matches, keep) = self.patterns.final_matches(&d, false);
        let front = self.queue.front().map_or(seq, |p| p.seq);
        // An owner is writable if its event has not gone out yet.
        let writable = |s: u64| s >= front;

        let mut new_w = None;
        if !matches.is_empty() {
            self.count += matches.len();
            // New bytes for each piece's region of d[..keep]; d[keep..] is the new tail,
            // untouched by any match.
            let mut starts = Vec::with_capacity(pieces.len());
            let mut at = 0;
            for p in &pieces {
                starts.push(at);
                at += p.bytes.len();
            }
            // The piece that holds d[pos]: the last one starting at or before it (empty pieces
            // before it start no later than it does).
            let owner_of = |pos: usize| -> usize { starts.partition_point(|&s| s <= pos) - 1 };
            let mut rebuilt: Vec<Vec<u8>> = vec![Vec::new(); pieces.len()];
            let mut pos = 0;
            for m in &matches {
                for i in pos..m.range.start {
                    rebuilt[owner_of(i)].push(d[i]);
                }
                // The replacement goes where the match starts, or, if that event is already
                // out, into the first covered piece that is not.
                let first = owner_of(m.range.start);
                let last = owner_of(m.range.end - 1);
                let target = (first..=last).find(|&i| writable(pieces[i].seq));
                for i in m.range.clone() {
                    let o = owner_of(i);
                    if !writable(pieces[o].seq) {
                        // Already sent: kept as it was (only a prefix shorter than HOLD_MIN,
                        // or one released from a full queue, can be here).
                        rebuilt[o].push(d[i]);
                    }
                }
                if let Some(t) = target {
                    rebuilt[t].extend_from_slice(&m.replacement);
                }
                pos = m.range.end;
            }
            for i in pos..keep.max(pos) {
                rebuilt[owner_of(i)].push(d[i]);
            }
            // Apply: each piece's region is replaced by its rebuilt bytes plus its part of
            // d[keep..].
            for (i, p) in pieces.iter().enumerate() {
                let start = starts[i];
                let end = start + p.bytes.len();
                let mut region = std::mem::take(&mut rebuilt[i]);
                if end > keep {
                    region.extend_from_slice(&d[keep.max(start)..end]);
                }
                if region == p.bytes || !writable(p.seq) {
                    continue;
                }
                if p.seq == seq {
                    new_w = Some(region);
                } else {
                    let path = channel.path.clone();
                    if let Some(q) = self.queue.iter_mut().find(|q| q.seq == p.seq) {
                        let old = value_bytes(&q.data, path.as_deref());
                        if let Some(old) = old {
                            let prefix = &old[..old.len().saturating_sub(p.bytes.len())];
                            let mut v = prefix.to_vec();
                            v.extend_from_slice(&region);
                            set_value(&mut q.data, path.as_deref(), v);
                            q.changed = true;
                        }
                    }
                }
            }
        }
        // The new carried suffix: d[keep..] split by owner.
        let mut tail = Vec::new();
        let mut at = 0;
        for p in pieces {
            let start = at;
            let end = at + p.bytes.len();
            at = end;
            if end <= keep {
                continue;
            }
            let from = keep.max(start) - start;
            tail.push(Piece {
                seq: p.seq,
                bytes: p.bytes[from..].to_vec(),
            });
        }
        channel.tail = tail;
        new_w
    }

    fn flush_move(&mut self, key: &str) -> Option<Pending<M>> {
        let c = self.moves.get_mut(key)?;
        c.open = false;
        let held = std::mem::take(&mut c.carry);
        // What goes out now may still start a pattern the channel completes if it resumes.
        let mut sent = std::mem::take(&mut c.emitted);
        sent.extend_from_slice(&held);
        let n = self.patterns.held_len(&sent);
        c.emitted = sent.split_off(sent.len() - n);
        if held.is_empty() {
            return None;
        }
        let (meta, mut event) = c.template.clone()?;
        if let Some(Value::String(s)) = get_mut(&mut event, &c.path) {
            *s = String::from_utf8_lossy(&held).into_owned();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(Pending {
            seq,
            meta,
            raw: Vec::new(),
            data: Data::Json(event),
            changed: true,
        })
    }

    /// End of stream: every text channel's held text, then every held event.
    pub(crate) fn finish(&mut self) -> Vec<Out<M>> {
        let mut out = Vec::new();
        for k in self.move_order.clone() {
            if let Some(p) = self.flush_move(&k) {
                self.queued_bytes += p.raw.len();
                self.queue.push_back(p);
            }
        }
        // The carried suffixes are proper prefixes: no pattern completes in them.
        for h in self.holds.values_mut() {
            h.tail.clear();
        }
        self.release(&mut out, true);
        out
    }
}

/// One value `w` of a text channel: scrubbed together with what the channel carries, the
/// possible pattern prefix at its end carried into the next value. Returns the bytes to put in
/// this event and the number of replacements.
fn move_step<M>(patterns: &ScrubPatterns, c: &mut MoveChannel<M>, w: &[u8]) -> (Vec<u8>, usize) {
    let e = c.emitted.len();
    let mut d = std::mem::take(&mut c.emitted);
    d.extend_from_slice(&c.carry);
    d.extend_from_slice(w);
    let (matches, keep) = patterns.final_matches(&d, false);
    let mut out = Vec::with_capacity(d.len());
    let mut pos = e;
    let mut n = 0;
    for m in &matches {
        if m.range.end <= e {
            continue;
        }
        // A match that starts in bytes already sent: its rest is replaced here.
        let start = m.range.start.max(e);
        out.extend_from_slice(&d[pos.min(start)..start]);
        out.extend_from_slice(&m.replacement);
        pos = m.range.end;
        n += 1;
    }
    if keep > pos {
        out.extend_from_slice(&d[pos..keep]);
    }
    // Sent bytes inside the new held suffix stay "emitted"; the rest of it is carried.
    c.emitted = if keep < e {
        d[keep..e].to_vec()
    } else {
        Vec::new()
    };
    c.carry = d[keep.max(e).max(pos)..].to_vec();
    // Never cut a UTF-8 character: an incomplete one at the end waits with the carry.
    if let Err(err) = std::str::from_utf8(&out) {
        if err.error_len().is_none() {
            let cut = err.valid_up_to();
            let mut carry = out.split_off(cut);
            carry.extend_from_slice(&c.carry);
            c.carry = carry;
        }
    }
    (out, n)
}

/// What a client assembles from events with these data, per channel (the stage's own channel
/// keys): the concatenation of each channel's values in order. For checks (fuzzing).
pub(crate) fn client_views(
    datas: &[Vec<u8>],
    bytes_key: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut views: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for d in datas {
        match serde_json::from_slice::<Value>(d) {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => {
                let index = v.get("index").map(|i| i.to_string()).unwrap_or_default();
                let mut leaves = Vec::new();
                collect_strings(&v, &mut Vec::new(), &mut leaves);
                for p in leaves {
                    let s = path_string(&p);
                    let key = if is_text_path(&s) {
                        format!("{index}#{s}")
                    } else {
                        format!("json:{s}")
                    };
                    if let Some(Value::String(t)) = get(&v, &p) {
                        views
                            .entry(key)
                            .or_default()
                            .extend_from_slice(t.as_bytes());
                    }
                }
            }
            _ => views
                .entry(bytes_key.to_string())
                .or_default()
                .extend_from_slice(d),
        }
    }
    views
}

fn collect_strings(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::String(_) => out.push(path.clone()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                collect_strings(item, path, out);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                path.push(Seg::Key(k.clone()));
                collect_strings(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn path_string(p: &[Seg]) -> String {
    let mut s = String::new();
    for (i, seg) in p.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        match seg {
            Seg::Key(k) => s.push_str(k),
            Seg::Index(n) => s.push_str(&n.to_string()),
        }
    }
    s
}

fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get(k.as_str())?,
            Seg::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get_mut(k.as_str())?,
            Seg::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// The bytes of a channel's value in an event: the string at `path`, or the whole data.
fn value_bytes(data: &Data, path: Option<&[Seg]>) -> Option<Vec<u8>> {
    match (data, path) {
        (Data::Json(v), Some(p)) => match get(v, p) {
            Some(Value::String(s)) => Some(s.as_bytes().to_vec()),
            _ => None,
        },
        (Data::Bytes(b), None) => Some(b.clone()),
        _ => None,
    }
}

fn set_value(data: &mut Data, path: Option<&[Seg]>, new: Vec<u8>) {
    match (data, path) {
        (Data::Json(v), Some(p)) => {
            if let Some(Value::String(s)) = get_mut(v, p) {
                *s = match String::from_utf8(new) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                };
            }
        }
        (Data::Bytes(b), None) => *b = new,
        _ => {}
    }
}
