//! The cross-event scrubber through its public framings: what a client assembles from the
//! events never holds the secret, whatever the layout, line ending, chunking or event size;
//! events without secrets pass byte for byte and in order.
#![allow(clippy::unwrap_used)]

use credproxy_core::Secret;
use credproxy_scrub::events::{HOLD_MIN, MAX_EVENT, MAX_HELD_EVENTS};
use credproxy_scrub::{
    EventStreamScrubber, Message, MessageScrubber, ScrubEntry, ScrubPatterns, StreamFormat,
};
use proptest::prelude::*;
use serde_json::{json, Value};

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

/// Feed `input` in chunks of `chunk` bytes, then finish.
fn run(format: StreamFormat, input: &[u8], chunk: usize) -> Vec<u8> {
    let mut s = EventStreamScrubber::new(format, patterns());
    let mut out = Vec::new();
    for c in input.chunks(chunk.max(1)) {
        out.extend(s.push(c).unwrap());
    }
    out.extend(s.finish());
    out
}

/// The data of each SSE event (any line ending).
fn sse_data(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut events = Vec::new();
    for ev in text.split("\n\n") {
        let data: Vec<&str> = ev
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|v| v.strip_prefix(' ').unwrap_or(v))
            .collect();
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
    events
}

/// What a client concatenates: the string at `pointer` of every JSON event, or the data of
/// every event when `pointer` is empty.
fn assembled(body: &[u8], format: StreamFormat, pointer: &str) -> String {
    let events: Vec<String> = match format {
        StreamFormat::Sse => sse_data(body),
        StreamFormat::Ndjson => String::from_utf8_lossy(body)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let mut out = String::new();
    for e in events {
        if pointer.is_empty() {
            out.push_str(&e);
        } else if let Ok(v) = serde_json::from_str::<Value>(&e) {
            if let Some(s) = v.pointer(pointer).and_then(Value::as_str) {
                out.push_str(s);
            }
        }
    }
    out
}

fn sse(events: &[String], eol: &str) -> Vec<u8> {
    events
        .iter()
        .map(|d| format!("data: {d}{eol}{eol}"))
        .collect::<String>()
        .into_bytes()
}

/// The secret split at `cuts`.
fn pieces(cuts: &[usize]) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain([SECRET.len()].iter()) {
        out.push(&SECRET[at..c]);
        at = c;
    }
    out
}

#[test]
fn anthropic_deltas_are_scrubbed_at_every_split_and_chunking() {
    let full = format!("key seen: Bearer {SECRET} ok");
    for cut1 in [10, 17, 20, 30, 45] {
        for cut2 in [cut1 + 3, cut1 + 11] {
            let cut2 = cut2.min(full.len() - 1);
            let mut events = vec![
                r#"{"type":"message_start","message":{"id":"m","model":"claude"}}"#.to_string(),
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_string(),
            ];
            for (i, p) in [&full[..cut1], &full[cut1..cut2], &full[cut2..]]
                .iter()
                .enumerate()
            {
                if i == 1 {
                    events.push(r#"{"type": "ping"}"#.to_string());
                }
                events.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}).to_string());
            }
            events.push(r#"{"type":"content_block_stop","index":0}"#.to_string());
            events.push(r#"{"type":"message_stop"}"#.to_string());
            let input = sse(&events, "\n");
            for chunk in [1usize, 7, 64, 100_000] {
                let out = run(StreamFormat::Sse, &input, chunk);
                let text = assembled(&out, StreamFormat::Sse, "/delta/text");
                assert_eq!(
                    text,
                    format!("key seen: Bearer {PH} ok"),
                    "cuts {cut1},{cut2} chunk {chunk}"
                );
                assert!(!String::from_utf8_lossy(&out).contains(SECRET));
                // Every delta before the block stops; the other events keep their order.
                let types: Vec<String> = sse_data(&out)
                    .iter()
                    .map(|d| {
                        serde_json::from_str::<Value>(d).unwrap()["type"]
                            .as_str()
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect();
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
    let input = b"event: a\ndata: {\"text\":\"hello \"}\n\n: comment\n\nid: 7\ndata: plain text\ndata: two lines\n\ndata: {\"model\":\"claude-sonnet\",\"delta\":{\"text\":\"world\"}}\r\n\r\ndata: [DONE]\r\r";
    for chunk in [1, 3, 1000] {
        assert_eq!(
            run(StreamFormat::Sse, input, chunk),
            input.to_vec(),
            "{chunk}"
        );
    }
    let nd = b"{\"response\":\"a\"}\n\n{\"response\":\"b\",\"done\":true}\r\nnot json\n";
    assert_eq!(run(StreamFormat::Ndjson, nd, 2), nd.to_vec());
}

#[test]
fn plain_unknown_and_gemini_layouts_at_every_line_ending() {
    type Make = Box<dyn Fn(&str) -> String>;
    let layouts: Vec<(&str, StreamFormat, Make)> = vec![
        ("", StreamFormat::Sse, Box::new(|p: &str| p.to_string())),
        (
            "/chunk/payload",
            StreamFormat::Sse,
            Box::new(|p: &str| {
                json!({"seq": 1, "chunk": {"payload": p}, "model": "m"}).to_string()
            }),
        ),
        (
            "/candidates/0/content/parts/0/text",
            StreamFormat::Sse,
            Box::new(|p: &str| {
                json!({"candidates": [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}], "modelVersion": "gemini"}).to_string()
            }),
        ),
        (
            "/out/piece",
            StreamFormat::Ndjson,
            Box::new(|p: &str| json!({"out": {"piece": p}}).to_string()),
        ),
        (
            "/response",
            StreamFormat::Ndjson,
            Box::new(|p: &str| json!({"model": "llama", "response": p, "done": false}).to_string()),
        ),
    ];
    for (pointer, format, make) in &layouts {
        for eol in ["\n", "\r", "\r\n"] {
            if *format == StreamFormat::Ndjson && eol == "\r" {
                continue;
            }
            for cuts in [
                vec![20],
                vec![4, 21],
                vec![HOLD_MIN, 9, 30],
                vec![1, 2, 3, 4, 5],
            ] {
                let events: Vec<String> = pieces(&cuts).iter().map(|p| make(p)).collect();
                let input = match format {
                    StreamFormat::Sse => sse(&events, eol),
                    StreamFormat::Ndjson => events
                        .iter()
                        .map(|e| format!("{e}{eol}"))
                        .collect::<String>()
                        .into_bytes(),
                };
                for chunk in [1, 5, 100_000] {
                    let out = run(*format, &input, chunk);
                    let text = assembled(&out, *format, pointer);
                    assert!(
                        !text.contains(SECRET),
                        "{pointer} {eol:?} {cuts:?} {chunk}: {text}"
                    );
                    assert!(!String::from_utf8_lossy(&out).contains(SECRET));
                    // A split after fewer than HOLD_MIN bytes of an unknown field lets only
                    // those bytes through.
                    assert!(text.ends_with(PH), "{pointer} {eol:?} {cuts:?}: {text}");
                    assert!(
                        text.len() - PH.len() < HOLD_MIN,
                        "{pointer} {cuts:?}: {text}"
                    );
                    assert_eq!(
                        out,
                        run(*format, &input, 100_000),
                        "chunking changes the output"
                    );
                }
            }
        }
    }
}

#[test]
fn a_field_that_only_looks_like_a_prefix_is_neither_moved_nor_held_for_long() {
    // `model` ends in a possible prefix of the secret in every event: the events are held one
    // event each (until the next `model` shows it did not continue) and come out unchanged.
    let model = "claude-sk-ant";
    let events: Vec<String> = (0..5)
        .map(|i| json!({"model": model, "delta": {"text": format!("word{i} ")}}).to_string())
        .collect();
    let input = sse(&events, "\n");
    let mut s = EventStreamScrubber::new(StreamFormat::Sse, patterns());
    let mut out = Vec::new();
    for (i, e) in input
        .split_inclusive(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .enumerate()
    {
        out.extend(s.push(&e.concat()).unwrap());
        // At most the latest event waits.
        assert!(s.held_events() <= 1, "event {i}");
    }
    out.extend(s.finish());
    assert_eq!(out, input);
}

#[test]
fn a_field_seen_once_with_a_possible_prefix_is_released_when_the_queue_is_full() {
    let mut events = vec![json!({"id": "msg-sk-ant-api03"}).to_string()];
    for i in 0..MAX_HELD_EVENTS + 3 {
        events.push(json!({"n": i}).to_string());
    }
    let input = sse(&events, "\n");
    let mut s = EventStreamScrubber::new(StreamFormat::Sse, patterns());
    let out = s.push(&input).unwrap();
    assert!(!out.is_empty(), "everything is still held");
    assert!(s.forced_releases() >= 1);
    let mut all = out;
    all.extend(s.finish());
    assert_eq!(all, input);
}

#[test]
fn events_over_the_limit_fail_and_big_events_below_it_are_scrubbed() {
    let pad = ".".repeat(2 << 20);
    let events = vec![
        json!({"pad": pad, "chunk": {"payload": &SECRET[..20]}}).to_string(),
        json!({"chunk": {"payload": &SECRET[20..]}}).to_string(),
    ];
    let out = run(StreamFormat::Sse, &sse(&events, "\n"), 64 * 1024);
    let text = assembled(&out, StreamFormat::Sse, "/chunk/payload");
    assert_eq!(text, PH);

    let mut s = EventStreamScrubber::new(StreamFormat::Sse, patterns());
    let huge = vec![b'x'; MAX_EVENT + 10];
    let mut failed = false;
    for c in [&b"data: "[..], &huge].concat().chunks(1 << 20) {
        match s.push(c) {
            Ok(out) => assert!(out.is_empty()),
            Err(e) => {
                assert!(e.to_string().contains("exceeds"));
                failed = true;
                break;
            }
        }
    }
    assert!(failed);
    let mut s = EventStreamScrubber::new(StreamFormat::Ndjson, patterns());
    assert!(s.push(&huge).is_err());
}

#[test]
fn websocket_messages_across_messages_and_kinds() {
    let mut s = MessageScrubber::new(patterns());
    let mut out = Vec::new();
    out.extend(s.push(Message::Text(
        json!({"type": "response.text.delta", "delta": &SECRET[..15]}).to_string(),
    )));
    out.extend(s.push(Message::Text(
        json!({"type": "response.text.delta", "delta": &SECRET[15..]}).to_string(),
    )));
    out.extend(s.push(Message::Binary(
        [b"bin ", &SECRET.as_bytes()[..10]].concat(),
    )));
    out.extend(s.push(Message::Binary(SECRET.as_bytes()[10..].to_vec())));
    out.extend(s.push(Message::Text(format!("plain {SECRET}"))));
    out.extend(s.push(Message::Text("no secret".into())));
    out.extend(s.finish());
    let mut deltas = String::new();
    let mut binary = Vec::new();
    for m in &out {
        match m {
            Message::Text(t) => {
                assert!(!t.contains(SECRET), "{t}");
                if let Ok(v) = serde_json::from_str::<Value>(t) {
                    deltas.push_str(v["delta"].as_str().unwrap_or(""));
                }
            }
            Message::Binary(b) => binary.extend_from_slice(b),
        }
    }
    assert_eq!(deltas, PH);
    assert_eq!(binary, format!("bin {PH}").into_bytes());
    assert!(out.contains(&Message::Text(format!("plain {PH}"))));
    assert_eq!(out.last(), Some(&Message::Text("no secret".into())));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random streams: a secret split at random places across events of a random layout,
    /// random chunking. The output does not depend on the chunking, and no client view holds
    /// the secret.
    #[test]
    fn random_splits_and_chunkings(
        cuts in proptest::collection::btree_set(1usize..SECRET.len(), 0..6),
        layout in 0usize..4,
        eol in 0usize..3,
        filler in proptest::collection::vec(0usize..3, 0..4),
        chunk in 1usize..64,
    ) {
        let cuts: Vec<usize> = cuts.into_iter().collect();
        let eol = ["\n", "\r", "\r\n"][eol];
        let mut events = Vec::new();
        for (i, p) in pieces(&cuts).into_iter().enumerate() {
            if let Some(&f) = filler.get(i) {
                // Unrelated events in between.
                events.push(match f { 0 => r#"{"type":"ping"}"#.to_string(), 1 => "[DONE]".to_string(), _ => json!({"other": "x"}).to_string() });
            }
            events.push(match layout {
                0 => p.to_string(),
                1 => json!({"candidates": [{"content": {"parts": [{"text": p}]}}]}).to_string(),
                2 => json!({"a": {"b": p}, "model": "sk"}).to_string(),
                _ => json!({"choices": [{"index": 0, "delta": {"content": p}}]}).to_string(),
            });
        }
        let input = sse(&events, eol);
        let whole = run(StreamFormat::Sse, &input, usize::MAX);
        let chunked = run(StreamFormat::Sse, &input, chunk);
        prop_assert_eq!(&whole, &chunked);
        let pointer = ["", "/candidates/0/content/parts/0/text", "/a/b", "/choices/0/delta/content"][layout];
        let text = if layout == 0 {
            // Every plain-text event's data, in order ([DONE] included: it is part of that
            // text channel; JSON events are other channels).
            sse_data(&whole).into_iter().filter(|d| !d.starts_with('{')).collect::<String>()
        } else {
            assembled(&whole, StreamFormat::Sse, pointer)
        };
        prop_assert!(!text.contains(SECRET), "{}", text);
        prop_assert!(!String::from_utf8_lossy(&whole).contains(SECRET));
    }
}
