//! The daemon's wire format (docs/protocol.md): length-prefixed frames of a JSON header and
//! binary attachments, read with every length checked before anything is allocated. What the
//! headers say is typed in `request` and `event`; `connection` reads and writes them.

use std::io::{Read, Write};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Protocol version spoken by this daemon (the `hello` must name it).
pub const PROTOCOL_VERSION: u32 = 1;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SDH1";

/// Largest JSON header accepted.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;

/// How an attachment's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// 8-bit RGBA, row-major, no padding: width·height·4 bytes.
    Rgba8,
    /// 8-bit grey (masks), width·height bytes.
    Y8,
    /// A PNG file (any PNG colour type).
    Png,
}

/// One attachment's description in the header; the bytes follow the header in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// What it is: `image`, `mask`, `sketch`, `patch` …
    pub name: String,
    /// Byte layout.
    pub format: PixelFormat,
    /// Width in pixels (0 for PNG, which carries its own).
    #[serde(default)]
    pub width: u32,
    /// Height in pixels (0 for PNG).
    #[serde(default)]
    pub height: u32,
    /// Number of bytes.
    pub length: u64,
}

/// The `type` values of a message enum tagged with `type` (requests, events), read from its
/// JSON schema so that a variant added in code is a type the docs must name.
pub fn message_types<T: JsonSchema>() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    let variants = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    variants
        .iter()
        .filter_map(|variant| {
            let tag = &variant["properties"]["type"];
            tag.get("const")
                .or_else(|| tag["enum"].get(0))
                .and_then(serde_json::Value::as_str)
                .map(String::from)
        })
        .collect()
}

/// The string values of an enum of unit variants (error codes), read from its JSON schema.
pub fn unit_values<T: JsonSchema>() -> Vec<String> {
    fn collect(schema: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(value) = schema.get("const").and_then(serde_json::Value::as_str) {
            out.push(value.to_string());
        }
        // Documented variants come as `oneOf` of `const`s, plain ones as one `enum`.
        for values in ["enum", "oneOf"].iter().filter_map(|k| schema.get(k)) {
            for value in values.as_array().into_iter().flatten() {
                match value.as_str() {
                    Some(text) => out.push(text.to_string()),
                    None => collect(value, out),
                }
            }
        }
    }
    let mut values = Vec::new();
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    collect(&schema, &mut values);
    values
}

/// A decoded frame: the header object and the attachments' bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The JSON header (an object with at least `type`).
    pub header: serde_json::Value,
    /// Attachments with their bytes, in header order.
    pub attachments: Vec<(Attachment, Vec<u8>)>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// I/O failed or the connection ended inside a frame.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream is not at a frame boundary any more: the connection must be closed.
    #[error("framing lost: {0}")]
    FramingLost(String),
    /// The frame was read completely but its content is invalid; the connection goes on.
    #[error("{0}")]
    Invalid(String),
}

/// Limits a reader enforces before allocating.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Largest payload (all attachments) in bytes.
    pub max_payload: u64,
}

fn read_exact_or_closed(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection ended inside a frame",
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one frame. Lengths are checked against the limits before any buffer is allocated;
/// a header that is not a JSON object, or attachments whose sizes disagree with the header,
/// give [`FrameError::Invalid`] after the whole frame was consumed (the stream stays usable).
pub fn read_frame(reader: &mut impl Read, limits: FrameLimits) -> Result<Frame, FrameError> {
    let mut prefix = [0u8; 12];
    read_exact_or_closed(reader, &mut prefix)?;
    if prefix[..4] != MAGIC {
        return Err(FrameError::FramingLost(format!(
            "a frame must start with \"SDH1\", got {:?}",
            String::from_utf8_lossy(&prefix[..4])
        )));
    }
    let header_len = u32::from_be_bytes(prefix[4..8].try_into().expect("4 bytes"));
    let payload_len = u32::from_be_bytes(prefix[8..12].try_into().expect("4 bytes"));
    if header_len > MAX_HEADER_BYTES {
        return Err(FrameError::FramingLost(format!(
            "header of {header_len} bytes is over the limit of {MAX_HEADER_BYTES}"
        )));
    }
    if u64::from(payload_len) > limits.max_payload {
        return Err(FrameError::FramingLost(format!(
            "payload of {payload_len} bytes is over the limit of {}",
            limits.max_payload
        )));
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    read_exact_or_closed(reader, &mut header_bytes).map_err(inside_frame)?;
    // The header decides how the payload is split; whatever is wrong with it, the payload is
    // consumed so the next frame starts where it should.
    let described = describe(&header_bytes, payload_len);
    let (header, described) = match described {
        Ok(parts) => parts,
        Err(message) => {
            skip(reader, u64::from(payload_len)).map_err(inside_frame)?;
            return Err(FrameError::Invalid(message));
        }
    };
    let mut attachments = Vec::with_capacity(described.len());
    for attachment in described {
        // Each attachment is read straight into its own buffer: an 80 MiB layer is not copied.
        let mut bytes = vec![0u8; attachment.length as usize];
        read_exact_or_closed(reader, &mut bytes).map_err(inside_frame)?;
        attachments.push((attachment, bytes));
    }
    Ok(Frame {
        header,
        attachments,
    })
}

/// The header object and its attachment list, checked against the payload length.
fn describe(
    header_bytes: &[u8],
    payload_len: u32,
) -> Result<(serde_json::Value, Vec<Attachment>), String> {
    let header: serde_json::Value = serde_json::from_slice(header_bytes)
        .map_err(|e| format!("the header is not valid JSON: {e}"))?;
    if !header.is_object() {
        return Err("the header must be a JSON object".into());
    }
    let described: Vec<Attachment> = match header.get("attachments") {
        None => Vec::new(),
        Some(list) => {
            serde_json::from_value(list.clone()).map_err(|e| format!("bad attachment list: {e}"))?
        }
    };
    let declared: u64 = described.iter().map(|a| a.length).sum();
    if declared != u64::from(payload_len) {
        return Err(format!(
            "the attachments declare {declared} bytes but the frame carries {payload_len}"
        ));
    }
    for attachment in &described {
        let expected = match attachment.format {
            PixelFormat::Rgba8 => {
                Some(u64::from(attachment.width) * u64::from(attachment.height) * 4)
            }
            PixelFormat::Y8 => Some(u64::from(attachment.width) * u64::from(attachment.height)),
            PixelFormat::Png => None,
        };
        if let Some(expected) = expected {
            if expected != attachment.length || attachment.width == 0 || attachment.height == 0 {
                return Err(format!(
                    "attachment \"{}\": {}x{} {:?} needs {expected} bytes, {} declared",
                    attachment.name,
                    attachment.width,
                    attachment.height,
                    attachment.format,
                    attachment.length
                ));
            }
        }
    }
    Ok((header, described))
}

/// Reads and drops `len` bytes in small pieces (nothing of the announced size is allocated).
fn skip(reader: &mut impl Read, len: u64) -> Result<(), FrameError> {
    let copied = std::io::copy(&mut reader.take(len), &mut std::io::sink())?;
    if copied < len {
        return Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection ended inside a frame",
        )));
    }
    Ok(())
}

/// An error between the length prefix and the end of a frame means the stream is lost.
fn inside_frame(error: FrameError) -> FrameError {
    match error {
        FrameError::Closed => FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection ended inside a frame",
        )),
        other => other,
    }
}

/// Writes one frame: `header` gets the `attachments` list, the bytes follow it.
pub fn write_frame(
    writer: &mut impl Write,
    header: &serde_json::Value,
    attachments: &[(Attachment, Vec<u8>)],
) -> std::io::Result<()> {
    let mut header = header.clone();
    if !attachments.is_empty() {
        let list: Vec<&Attachment> = attachments.iter().map(|(a, _)| a).collect();
        header["attachments"] = serde_json::to_value(list).expect("attachments serialise");
    }
    let header_bytes = serde_json::to_vec(&header).expect("JSON serialises");
    let payload_len: usize = attachments.iter().map(|(_, b)| b.len()).sum();
    let too_long = |what| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let header_len = u32::try_from(header_bytes.len()).map_err(|_| too_long("header too long"))?;
    let payload_len = u32::try_from(payload_len).map_err(|_| too_long("payload too long"))?;
    let mut prefix = Vec::with_capacity(12);
    prefix.extend_from_slice(&MAGIC);
    prefix.extend_from_slice(&header_len.to_be_bytes());
    prefix.extend_from_slice(&payload_len.to_be_bytes());
    writer.write_all(&prefix)?;
    writer.write_all(&header_bytes)?;
    for (_, bytes) in attachments {
        writer.write_all(bytes)?;
    }
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits { max_payload: 1024 };

    fn frame_bytes(header: &serde_json::Value, attachments: &[(Attachment, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, header, attachments).unwrap();
        out
    }

    #[test]
    fn frames_round_trip_with_attachments() {
        let mask = Attachment {
            name: "mask".into(),
            format: PixelFormat::Y8,
            width: 3,
            height: 2,
            length: 6,
        };
        let bytes = frame_bytes(
            &serde_json::json!({"type": "ping", "id": 7}),
            &[(mask.clone(), vec![1, 2, 3, 4, 5, 6])],
        );
        let mut reader = &bytes[..];
        let frame = read_frame(&mut reader, LIMITS).unwrap();
        assert_eq!(frame.header["type"], "ping");
        assert_eq!(frame.attachments, vec![(mask, vec![1, 2, 3, 4, 5, 6])]);
        assert!(matches!(
            read_frame(&mut reader, LIMITS),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn bad_frames_are_told_apart() {
        // Wrong magic: framing lost.
        let mut garbage = &b"GET / HTTP/1.1\r\n"[..];
        assert!(matches!(
            read_frame(&mut garbage, LIMITS),
            Err(FrameError::FramingLost(_))
        ));
        // A payload over the limit is refused before allocation.
        let mut huge = Vec::from(MAGIC);
        huge.extend_from_slice(&2u32.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_frame(&mut &huge[..], LIMITS),
            Err(FrameError::FramingLost(_))
        ));
        // Truncated inside the frame.
        let whole = frame_bytes(&serde_json::json!({"type": "ping"}), &[]);
        assert!(matches!(
            read_frame(&mut &whole[..whole.len() - 2], LIMITS),
            Err(FrameError::Io(_))
        ));
        // Bad JSON and wrong attachment sizes: invalid, and the next frame still reads.
        let mut stream = Vec::from(MAGIC);
        stream.extend_from_slice(&3u32.to_be_bytes());
        stream.extend_from_slice(&0u32.to_be_bytes());
        stream.extend_from_slice(b"{x}");
        let wrong = Attachment {
            name: "image".into(),
            format: PixelFormat::Rgba8,
            width: 2,
            height: 2,
            length: 3,
        };
        stream.extend(frame_bytes(
            &serde_json::json!({"type": "img2img"}),
            &[(wrong, vec![0, 0, 0])],
        ));
        stream.extend(whole);
        let mut reader = &stream[..];
        assert!(matches!(
            read_frame(&mut reader, LIMITS),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            read_frame(&mut reader, LIMITS),
            Err(FrameError::Invalid(_))
        ));
        assert_eq!(
            read_frame(&mut reader, LIMITS).unwrap().header["type"],
            "ping"
        );
    }
}
