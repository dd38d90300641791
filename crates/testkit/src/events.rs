//! What a client makes of an event stream: the server-sent events' data (any line ending, as
//! the SSE specification allows), NDJSON lines, and the text an SDK assembles by concatenating
//! one field across events. Tests check *that* text for secrets, since a secret split across
//! events never appears contiguously in the bytes on the wire.

use serde_json::Value;

/// The `data` of every event of a `text/event-stream` body, in order (data lines joined with
/// `\n`, per the specification). Lines may end in CRLF, LF or CR.
pub fn sse_data(body: &[u8]) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut line_start = 0;
    while i <= body.len() {
        let end_of_line = i == body.len() || body[i] == b'\n' || body[i] == b'\r';
        if !end_of_line {
            i += 1;
            continue;
        }
        if i == body.len() && line_start == i {
            break;
        }
        let line = &body[line_start..i];
        if i < body.len() && body[i] == b'\r' && body.get(i + 1) == Some(&b'\n') {
            i += 1;
        }
        i += 1;
        line_start = i;
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(d);
            }
            continue;
        }
        if line.starts_with(b":") {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            match data.as_mut() {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            }
        }
    }
    events
}

/// The non-empty lines of an NDJSON body (LF or CRLF).
pub fn ndjson_lines(body: &[u8]) -> Vec<Vec<u8>> {
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The text field an SDK concatenates for each `/stream` layout.
fn text_of(layout: &str, v: &Value) -> Option<String> {
    let s = match layout {
        "openai" => &v["choices"][0]["delta"]["content"],
        "anthropic" => &v["delta"]["text"],
        "gemini" => &v["candidates"][0]["content"]["parts"][0]["text"],
        "custom" | "ndjson-custom" => &v["chunk"]["payload"],
        "ndjson" => &v["response"],
        "realtime" => &v["delta"],
        _ => return None,
    };
    s.as_str().map(str::to_owned)
}

/// What a client of the `/stream` layout `layout` assembles from `body`: the concatenated
/// data of `plain` events, or the concatenated text field of the JSON layouts (events that
/// are not JSON, such as `[DONE]`, are skipped).
pub fn reassemble(layout: &str, body: &[u8]) -> Vec<u8> {
    let events = if layout.starts_with("ndjson") {
        ndjson_lines(body)
    } else {
        sse_data(body)
    };
    let mut out = Vec::new();
    for e in events {
        if layout == "plain" {
            out.extend_from_slice(&e);
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&e) {
            if let Some(t) = text_of(layout, &v) {
                out.extend_from_slice(t.as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_data_with_every_line_ending() {
        for eol in ["\n", "\r", "\r\n"] {
            let body = format!("data: a{eol}data: b{eol}{eol}: c{eol}data:x{eol}{eol}");
            assert_eq!(
                sse_data(body.as_bytes()),
                vec![b"a\nb".to_vec(), b"x".to_vec()],
                "{eol:?}"
            );
        }
    }

    #[test]
    fn reassembles_layouts() {
        let body = b"data: {\"chunk\":{\"payload\":\"ab\"}}\n\ndata: {\"chunk\":{\"payload\":\"cd\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(reassemble("custom", body), b"abcd");
        assert_eq!(
            reassemble("ndjson", b"{\"response\":\"a\"}\r\n{\"response\":\"b\"}\n"),
            b"ab"
        );
    }
}
