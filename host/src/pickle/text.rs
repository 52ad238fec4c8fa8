//! The text arguments of protocol-0 opcodes (`INT`, `LONG`, `FLOAT`, `STRING`, `UNICODE`),
//! which old pickles and hand-written payloads use.

use super::value::Value;

/// `INT`: a decimal int, or `00`/`01` for False/True.
pub(super) fn int(line: &str) -> Result<Value, String> {
    match line {
        "00" => Ok(Value::Bool(false)),
        "01" => Ok(Value::Bool(true)),
        _ => long(line),
    }
}

/// `LONG`: a decimal int with an optional `L` suffix.
pub(super) fn long(line: &str) -> Result<Value, String> {
    line.trim_end_matches('L')
        .parse::<i64>()
        .map(Value::Int)
        .map_err(|_| "bad or too large text integer".to_string())
}

/// `FLOAT`: a decimal float.
pub(super) fn float(line: &str) -> Result<Value, String> {
    line.parse::<f64>()
        .map(Value::Float)
        .map_err(|_| "bad text float".to_string())
}

/// `STRING`: a Python 2 `repr` of a str, quoted and backslash-escaped.
pub(super) fn quoted_string(line: &str) -> Result<Value, String> {
    let bytes = line.as_bytes();
    let quoted = bytes.len() >= 2
        && (bytes[0] == b'\'' || bytes[0] == b'"')
        && bytes[bytes.len() - 1] == bytes[0];
    if !quoted {
        return Err("STRING argument is not quoted".into());
    }
    let mut out = Vec::new();
    let mut rest = &bytes[1..bytes.len() - 1];
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let (&e, tail) = rest.split_first().ok_or("dangling backslash")?;
        rest = tail;
        out.push(match e {
            b'\\' | b'\'' | b'"' => e,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'x' if rest.len() >= 2 => {
                let hex = std::str::from_utf8(&rest[..2]).map_err(|_| "bad \\x escape")?;
                rest = &rest[2..];
                u8::from_str_radix(hex, 16).map_err(|_| "bad \\x escape")?
            }
            _ => return Err("unsupported escape in STRING".into()),
        });
    }
    Ok(match String::from_utf8(out) {
        Ok(s) => Value::Str(s),
        Err(e) => Value::Bytes(e.into_bytes()),
    })
}

/// `UNICODE`: raw-unicode-escape text (`\u` + 4 hex digits and `\U` + 8 hex digits are
/// escapes, other chars stand for themselves).
pub(super) fn raw_unicode(line: &str) -> Result<Value, String> {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let digits = match (c, chars.peek()) {
            ('\\', Some('u')) => 4,
            ('\\', Some('U')) => 8,
            _ => {
                out.push(c);
                continue;
            }
        };
        chars.next();
        let hex: String = chars.by_ref().take(digits).collect();
        let code = u32::from_str_radix(&hex, 16).map_err(|_| "bad \\u escape")?;
        out.push(char::from_u32(code).ok_or("bad \\u escape")?);
    }
    Ok(Value::Str(out))
}
