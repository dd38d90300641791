//! Scrubbing of server-sent events whose JSON payloads stream text in pieces.
//!
//! An LLM API streams its answer as many small events (`content_block_delta` with
//! `delta.text`, OpenAI's `choices[i].delta.content`, …). A secret the model repeats is then
//! split across JSON strings of different events: its bytes are never contiguous on the
//! wire, so byte-level scrubbing alone cannot see it. This stage parses each event, feeds
//! the text-delta strings of each content channel through a persistent streaming scrubber
//! (which holds back a possible pattern prefix into the channel's next delta), scrubs every
//! other JSON string as a whole value, and re-serialises only the events it changed. Text
//! still held when a channel ends is emitted as one more delta event, built from the
//! channel's last event, just before the event that ends it.
//!
//! Events that are not JSON pass through unchanged (the byte-level scrubber after this stage
//! still covers them). An event larger than `MAX_EVENT` is passed through without parsing.

use std::collections::HashMap;

use credproxy_scrub::{ScrubPatterns, StreamScrubber};
use serde_json::Value;

/// Events larger than this are not parsed (the byte scrubber still applies).
const MAX_EVENT: usize = 1 << 20;

/// JSON paths (dot-separated, array indices as numbers) whose strings are streamed text.
fn is_text_path(path: &str) -> bool {
    let tail = path.rsplit_once('.').map_or(path, |(_, t)| t);
    matches!(
        path,
        "delta.text"
            | "delta.partial_json"
            | "delta.thinking"
            | "delta.content"
            | "text"
            | "completion"
    ) || (path.starts_with("choices.")
        && (path.ends_with(".delta.content")
            || path.ends_with(".delta.reasoning_content")
            || path.ends_with(".text")))
        || (path.starts_with("delta.") && tail == "text")
}

struct Channel {
    scrubber: StreamScrubber,
    /// Bytes of an incomplete UTF-8 character at the end of the last output.
    utf8_tail: Vec<u8>,
    /// The last event of this channel (event name and JSON), to build a flush event from.
    event_name: Option<String>,
    template: Value,
    path: Vec<Seg>,
    open: bool,
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

pub struct SseScrubber {
    patterns: ScrubPatterns,
    buf: Vec<u8>,
    channels: HashMap<String, Channel>,
    /// Channel keys in creation order, so flushes are deterministic.
    order: Vec<String>,
    count: usize,
}

impl SseScrubber {
    pub fn new(patterns: ScrubPatterns) -> SseScrubber {
        SseScrubber {
            patterns,
            buf: Vec::new(),
            channels: HashMap::new(),
            order: Vec::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Process the complete events in `data`; partial events wait for their end.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            match find_event_end(&self.buf) {
                Some(end) => {
                    let event: Vec<u8> = self.buf.drain(..end).collect();
                    out.extend(self.process(&event));
                }
                None => {
                    if self.buf.len() > MAX_EVENT {
                        // Too large to parse: let it through to the byte scrubber.
                        out.extend(self.flush_all());
                        out.append(&mut self.buf);
                    }
                    return out;
                }
            }
        }
    }

    /// End of stream: the unterminated remainder, then every channel's held text.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            out.extend(self.process(&rest));
        }
        out.extend(self.flush_all());
        out
    }

    fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => return raw.to_vec(),
        };
        let mut event_name = None;
        let mut data_lines: Vec<&str> = Vec::new();
        let mut other: Vec<&str> = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(v) = line.strip_prefix("data:") {
                data_lines.push(v.strip_prefix(' ').unwrap_or(v));
            } else if let Some(v) = line.strip_prefix("event:") {
                event_name = Some(v.trim().to_string());
                other.push(line);
            } else if !line.is_empty() {
                other.push(line);
            }
        }
        if data_lines.is_empty() {
            return raw.to_vec();
        }
        let data = data_lines.join("\n");
        let Ok(mut value) = serde_json::from_str::<Value>(&data) else {
            // Not JSON (`[DONE]`, plain text): whatever was held goes out first.
            let mut out = self.flush_all();
            out.extend_from_slice(raw);
            return out;
        };
        let is_ping = value.get("type").and_then(Value::as_str) == Some("ping");
        let index = value
            .get("index")
            .map(|i| i.to_string())
            .unwrap_or_default();
        let mut leaves = Vec::new();
        collect_strings(&value, &mut Vec::new(), &mut leaves);
        let keys: Vec<(String, Vec<Seg>)> = leaves
            .iter()
            .filter(|p| is_text_path(&path_string(p)))
            .map(|p| (format!("{index}#{}", path_string(p)), p.clone()))
            .collect();

        let mut out = Vec::new();
        if !is_ping {
            // A channel absent from this event has ended: emit what it still holds first.
            let ended: Vec<String> = self
                .order
                .iter()
                .filter(|k| {
                    self.channels.get(*k).is_some_and(|c| c.open)
                        && !keys.iter().any(|(key, _)| key == *k)
                })
                .cloned()
                .collect();
            for k in ended {
                out.extend(self.flush(&k));
            }
        }

        let mut changed = false;
        // Streamed text: through the channel's scrubber.
        for (key, path) in &keys {
            let Some(Value::String(s)) = get_mut(&mut value, path) else {
                continue;
            };
            let original = std::mem::take(s);
            let channel = match self.channels.get_mut(key) {
                Some(c) => c,
                None => {
                    self.order.push(key.clone());
                    self.channels.entry(key.clone()).or_insert(Channel {
                        scrubber: self.patterns.stream(),
                        utf8_tail: Vec::new(),
                        event_name: None,
                        template: Value::Null,
                        path: path.clone(),
                        open: true,
                    })
                }
            };
            channel.open = true;
            let before = channel.scrubber.count();
            let mut bytes = std::mem::take(&mut channel.utf8_tail);
            bytes.extend(channel.scrubber.push(original.as_bytes()));
            self.count += channel.scrubber.count() - before;
            let valid = match std::str::from_utf8(&bytes) {
                Ok(_) => bytes.len(),
                Err(e) => e.valid_up_to(),
            };
            channel.utf8_tail = bytes.split_off(valid);
            let new = String::from_utf8(bytes).unwrap_or_default();
            if new != original {
                changed = true;
            }
            if let Some(Value::String(s)) = get_mut(&mut value, path) {
                *s = new;
            }
        }
        // Every other string: scrubbed as a whole value.
        for path in &leaves {
            if keys.iter().any(|(_, p)| same(p, path)) {
                continue;
            }
            if let Some(Value::String(s)) = get_mut(&mut value, path) {
                let (new, n) = self.patterns.scrub(s.as_bytes());
                if n > 0 {
                    self.count += n;
                    *s = String::from_utf8_lossy(&new).into_owned();
                    changed = true;
                }
            }
        }
        for (key, _) in &keys {
            if let Some(c) = self.channels.get_mut(key) {
                c.event_name = event_name.clone();
                c.template = value.clone();
            }
        }
        if changed {
            out.extend(render_event(&other, &value));
        } else {
            out.extend_from_slice(raw);
        }
        out
    }

    fn flush(&mut self, key: &str) -> Vec<u8> {
        let Some(c) = self.channels.get_mut(key) else {
            return Vec::new();
        };
        c.open = false;
        let before = c.scrubber.count();
        let mut held = std::mem::take(&mut c.utf8_tail);
        held.extend(c.scrubber.finish());
        self.count += c.scrubber.count() - before;
        // The channel may continue later: give it a fresh scrubber.
        c.scrubber = self.patterns.stream();
        if held.is_empty() {
            return Vec::new();
        }
        let mut event = c.template.clone();
        if let Some(Value::String(s)) = get_mut(&mut event, &c.path) {
            *s = String::from_utf8_lossy(&held).into_owned();
        }
        let name_line = c.event_name.as_ref().map(|n| format!("event: {n}"));
        let other: Vec<&str> = name_line.iter().map(String::as_str).collect();
        render_event(&other, &event)
    }

    fn flush_all(&mut self) -> Vec<u8> {
        let keys = self.order.clone();
        let mut out = Vec::new();
        for k in keys {
            out.extend(self.flush(&k));
        }
        out
    }
}

/// End (exclusive, including the blank line) of the first complete event in `buf`.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn render_event(other: &[&str], value: &Value) -> Vec<u8> {
    let mut s = String::new();
    for line in other {
        s.push_str(line);
        s.push('\n');
    }
    s.push_str("data: ");
    s.push_str(&serde_json::to_string(value).unwrap_or_default());
    s.push_str("\n\n");
    s.into_bytes()
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
    p.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn same(a: &[Seg], b: &[Seg]) -> bool {
    path_string(a) == path_string(b)
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

#[cfg(test)]
mod tests {
    use super::*;
    use credproxy_core::Secret;
    use credproxy_scrub::ScrubEntry;

    const SECRET: &str = "sk-ant-api03-REALCANARY-9f8e7d6c5b4a3210";
    const PH: &str = "agent-vault-00000000-0000-0000-0000-000000000001";

    fn patterns() -> ScrubPatterns {
        ScrubPatterns::new(vec![ScrubEntry {
            secret: Secret::new(SECRET.as_bytes().to_vec()),
            placeholder: PH.into(),
            rendered: vec![],
        }])
        .unwrap()
    }

    fn anthropic_stream(pieces: &[&str]) -> Vec<u8> {
        let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\n");
        s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        for (i, p) in pieces.iter().enumerate() {
            if i == 1 {
                s.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
            }
            let v = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}});
            s.push_str(&format!("event: content_block_delta\ndata: {v}\n\n"));
        }
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        s.into_bytes()
    }

    /// The text an SDK would assemble from the deltas.
    fn assembled(out: &[u8]) -> (String, Vec<String>) {
        let mut text = String::new();
        let mut types = Vec::new();
        for ev in String::from_utf8_lossy(out).split("\n\n") {
            for line in ev.lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(d).unwrap();
                    types.push(v["type"].as_str().unwrap_or("").to_string());
                    if let Some(t) = v["delta"]["text"].as_str() {
                        text.push_str(t);
                    }
                }
            }
        }
        (text, types)
    }

    #[test]
    fn a_secret_split_across_deltas_is_scrubbed_at_every_split_and_chunking() {
        let full = format!("key seen: Bearer {SECRET} ok");
        for cut1 in [10, 17, 20, 30, 45] {
            for cut2 in [cut1 + 3, cut1 + 11] {
                let cut2 = cut2.min(full.len() - 1);
                let pieces = [&full[..cut1], &full[cut1..cut2], &full[cut2..]];
                let input = anthropic_stream(&pieces);
                for chunk in [1usize, 7, 64, 100_000] {
                    let mut s = SseScrubber::new(patterns());
                    let mut out = Vec::new();
                    for c in input.chunks(chunk) {
                        out.extend(s.push(c));
                    }
                    out.extend(s.finish());
                    let (text, types) = assembled(&out);
                    assert_eq!(
                        text,
                        format!("key seen: Bearer {PH} ok"),
                        "cuts {cut1},{cut2} chunk {chunk}"
                    );
                    assert!(!String::from_utf8_lossy(&out).contains(SECRET));
                    // Every delta comes before the block stops, and the order of the
                    // other events is kept.
                    let stop = types
                        .iter()
                        .position(|t| t == "content_block_stop")
                        .unwrap();
                    assert!(
                        types[stop + 1..].iter().all(|t| t != "content_block_delta"),
                        "{types:?}"
                    );
                    assert_eq!(types.last().unwrap(), "message_stop");
                }
            }
        }
    }

    #[test]
    fn events_without_secrets_pass_through_byte_identical() {
        let input = anthropic_stream(&["hello ", "world"]);
        let mut s = SseScrubber::new(patterns());
        let mut out = s.push(&input);
        out.extend(s.finish());
        assert_eq!(out, input);
    }

    #[test]
    fn openai_chunks_and_done() {
        let full = format!("Bearer {SECRET}");
        let mut input = String::new();
        for p in [&full[..12], &full[12..30], &full[30..]] {
            let v = serde_json::json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
            input.push_str(&format!("data: {v}\n\n"));
        }
        input.push_str("data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        input.push_str("data: [DONE]\n\n");
        let mut s = SseScrubber::new(patterns());
        let mut out = s.push(input.as_bytes());
        out.extend(s.finish());
        let text: String = String::from_utf8_lossy(&out)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, format!("Bearer {PH}"));
        assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
    }
}
