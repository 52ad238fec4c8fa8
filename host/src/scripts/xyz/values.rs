//! The X/Y/Z plot's value syntax, as A1111's `scripts/xyz_grid.py: process_axis` reads it:
//! comma-separated values with Python's CSV rules, integer ranges `a-b`, `a-b (+s)`, `a-b [n]`,
//! float ranges with numpy's `arange` and `linspace` arithmetic, and Python's `int()` and
//! `float()` for single values, so that a grid has exactly A1111's cells.

use std::sync::OnceLock;

use regex::Regex;

/// What an axis's values are (A1111's `AxisOption.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `int`: ranges `a-b`, `a-b (+s)`, `a-b [n]`.
    Int,
    /// `float`: ranges with numpy's arithmetic.
    Float,
    /// `str`: each value as written.
    Str,
    /// `str_permutations`: every ordering of the values.
    Permutations,
}

/// One value of an axis.
#[derive(Debug, Clone, PartialEq)]
pub enum AxisValue {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Str(String),
    /// One ordering of Prompt order's tokens.
    Order(Vec<String>),
}

impl AxisValue {
    /// Python's `str()` of the value after `format_value`'s `round(x, 8)` for floats.
    pub fn display(&self) -> String {
        match self {
            AxisValue::Int(value) => value.to_string(),
            AxisValue::Float(value) => crate::infotext::py_float(round8(*value)),
            AxisValue::Str(text) => text.clone(),
            AxisValue::Order(tokens) => tokens.join(", "),
        }
    }
}

/// Python's `round(x, 8)`: the nearest float to the correctly rounded 8-decimal value.
fn round8(value: f64) -> f64 {
    if !value.is_finite() {
        return value;
    }
    format!("{value:.8}").parse().unwrap_or(value)
}

/// A value that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

/// The values of a CSV line, each stripped: Python's `csv.reader` (quote `"`, doubled quotes,
/// `skipinitialspace`) over every line of `text`, as A1111's `csv_string_to_list_strip`.
pub fn csv_values(text: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut field = String::new();
    // States of CPython's `_csv.c` reader that these settings reach.
    #[derive(PartialEq)]
    enum State {
        StartRecord,
        StartField,
        InField,
        InQuoted,
        QuoteInQuoted,
    }
    let mut state = State::StartRecord;
    let mut record_has_fields = false;
    let end_record = |values: &mut Vec<String>, field: &mut String, has: &mut bool| {
        values.push(std::mem::take(field).trim().to_string());
        *has = false;
    };
    for c in text.chars() {
        match state {
            State::StartRecord | State::StartField => {
                if state == State::StartRecord && (c == '\n' || c == '\r') {
                    // An empty line is no record.
                    continue;
                }
                record_has_fields = true;
                match c {
                    '"' => state = State::InQuoted,
                    ' ' => state = State::StartField,
                    ',' => {
                        values.push(String::new());
                        state = State::StartField;
                    }
                    '\n' | '\r' => {
                        end_record(&mut values, &mut field, &mut record_has_fields);
                        state = State::StartRecord;
                    }
                    _ => {
                        field.push(c);
                        state = State::InField;
                    }
                }
            }
            State::InField => match c {
                ',' => {
                    values.push(std::mem::take(&mut field).trim().to_string());
                    state = State::StartField;
                }
                '\n' | '\r' => {
                    end_record(&mut values, &mut field, &mut record_has_fields);
                    state = State::StartRecord;
                }
                _ => field.push(c),
            },
            State::InQuoted => match c {
                '"' => state = State::QuoteInQuoted,
                _ => field.push(c),
            },
            State::QuoteInQuoted => match c {
                '"' => {
                    field.push('"');
                    state = State::InQuoted;
                }
                ',' => {
                    values.push(std::mem::take(&mut field).trim().to_string());
                    state = State::StartField;
                }
                '\n' | '\r' => {
                    end_record(&mut values, &mut field, &mut record_has_fields);
                    state = State::StartRecord;
                }
                // Not strict: text after a closing quote joins the field.
                _ => {
                    field.push(c);
                    state = State::InField;
                }
            },
        }
    }
    if state != State::StartRecord && record_has_fields {
        values.push(field.trim().to_string());
    }
    values
}

/// Python's `int(text)`: optional sign, decimal digits with single underscores between them,
/// surrounding whitespace.
pub fn py_int(text: &str) -> Option<i64> {
    let trimmed = text.trim();
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let clean = without_underscores(digits)?;
    if clean.is_empty() || !clean.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let magnitude: i64 = clean.parse().ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Python's `float(text)`: decimal or exponent notation, `inf`, `infinity`, `nan` (any case),
/// underscores between digits, surrounding whitespace.
pub fn py_float(text: &str) -> Option<f64> {
    let trimmed = text.trim();
    let clean = without_underscores(trimmed)?;
    let body = clean.trim_start_matches(['+', '-']);
    if clean.len() - body.len() > 1 {
        return None;
    }
    let word = body.to_ascii_lowercase();
    if matches!(word.as_str(), "inf" | "infinity" | "nan") {
        return clean.parse().ok();
    }
    let valid = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if !valid {
        return None;
    }
    clean.parse().ok()
}

/// `text` without the underscores Python allows between digits; None if one is elsewhere.
fn without_underscores(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == '_' {
            let before = i > 0 && chars[i - 1].is_ascii_digit();
            let after = chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if !(before && after) {
                return None;
            }
        }
    }
    Some(chars.into_iter().filter(|c| *c != '_').collect())
}

/// A1111's four range patterns, matched against the whole value (`re.fullmatch`).
struct Patterns {
    range: Regex,
    range_float: Regex,
    count: Regex,
    count_float: Regex,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: OnceLock<Patterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        // The number patterns are A1111's, unescaped `.` (any character) included: it makes
        // values such as `1e-5` parse as a range whose ends are not numbers, an error there.
        let int = r"[+-]?\s*\d+";
        let float = r"[+-]?\s*\d+(?:.\d*)?";
        let whole = |body: String| Regex::new(&format!("^(?:{body})$")).expect("valid pattern");
        Patterns {
            range: whole(format!(
                r"\s*({int})\s*-\s*({int})(?:\s*\(([+-]\d+)\s*\))?\s*"
            )),
            range_float: whole(format!(
                r"\s*({float})\s*-\s*({float})(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*"
            )),
            count: whole(format!(r"\s*({int})\s*-\s*({int})(?:\s*\[(\d+)\s*\])?\s*")),
            count_float: whole(format!(
                r"\s*({float})\s*-\s*({float})(?:\s*\[(\d+(?:.\d*)?)\s*\])?\s*"
            )),
        }
    })
}

fn bad(what: &str, text: &str) -> ValueError {
    ValueError(format!("\"{text}\" is not {what}"))
}

fn int_of(text: &str) -> Result<i64, ValueError> {
    py_int(text).ok_or_else(|| bad("an integer", text))
}

fn float_of(text: &str) -> Result<f64, ValueError> {
    py_float(text).ok_or_else(|| bad("a number", text))
}

/// Python's `range(start, stop, step)`.
fn py_range(start: i64, stop: i64, step: i64) -> Result<Vec<i64>, ValueError> {
    if step == 0 {
        return Err(ValueError("a range's step must not be zero".into()));
    }
    let mut values = Vec::new();
    let mut value = start;
    while (step > 0 && value < stop) || (step < 0 && value > stop) {
        values.push(value);
        // Past the largest integer is past `stop` too.
        let Some(next) = value.checked_add(step) else {
            break;
        };
        value = next;
    }
    Ok(values)
}

/// numpy's `arange(start, stop, step)` for floats: the length is `ceil((stop-start)/step)`,
/// the values `start`, `start+step`, then `start + i·δ` with `δ = (start+step) − start`
/// (numpy `DOUBLE_fill`), so they accumulate as A1111's do.
pub fn np_arange(start: f64, stop: f64, step: f64) -> Result<Vec<f64>, ValueError> {
    if step == 0.0 {
        return Err(ValueError("a range's step must not be zero".into()));
    }
    let length = ((stop - start) / step).ceil();
    if length.is_nan() {
        return Err(ValueError("the range's length cannot be computed".into()));
    }
    if length <= 0.0 {
        return Ok(Vec::new());
    }
    if length > 1e6 {
        return Err(ValueError(format!("the range has {length} values")));
    }
    let length = length as usize;
    let second = start + step;
    let delta = second - start;
    Ok((0..length)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect())
}

/// numpy's `linspace(start, stop, num)`: `i·step + start` with `step = (stop−start)/(num−1)`,
/// the last value exactly `stop`.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = num.saturating_sub(1) as f64;
    let delta = stop - start;
    let mut values: Vec<f64> = (0..num)
        .map(|i| {
            let i = i as f64;
            let scaled = if div > 0.0 {
                let step = delta / div;
                if step == 0.0 {
                    i / div * delta
                } else {
                    i * step
                }
            } else {
                i * delta
            };
            scaled + start
        })
        .collect();
    if num > 1 {
        values[num - 1] = stop;
    }
    values
}

/// Most values one axis may have (a guard against `1-100000000`).
pub const MAX_VALUES: usize = 10_000;

/// The values of one axis of `kind` from its listed items (A1111 `process_axis` after the CSV
/// split): ranges expanded, then each converted as the axis's type converts it.
pub fn expand(kind: ValueKind, items: &[String]) -> Result<Vec<AxisValue>, ValueError> {
    let p = patterns();
    let values = match kind {
        ValueKind::Int => {
            let mut values = Vec::new();
            for item in items {
                if let Some(m) = p.range.captures(item) {
                    let start = int_of(&m[1])?;
                    let end = int_of(&m[2])?
                        .checked_add(1)
                        .ok_or_else(|| too_large(item))?;
                    let step = m.get(3).map_or(Ok(1), |s| int_of(s.as_str()))?;
                    // In i128: the span of two i64 values does not fit in an i64.
                    let span = (i128::from(end) - i128::from(start)) / i128::from(step.max(1));
                    check_size(usize::try_from(span.unsigned_abs()).unwrap_or(usize::MAX))?;
                    values.extend(py_range(start, end, step)?.into_iter().map(AxisValue::Int));
                } else if let Some(m) = p.count.captures(item) {
                    let start = int_of(&m[1])?;
                    let end = int_of(&m[2])?;
                    let num = m.get(3).map_or(Ok(1), |n| int_of(n.as_str()))?;
                    check_size(usize::try_from(num).unwrap_or(usize::MAX))?;
                    values.extend(
                        np_linspace(start as f64, end as f64, num as usize)
                            .into_iter()
                            // Python's int() of a float truncates toward zero.
                            .map(|v| AxisValue::Int(v.trunc() as i64)),
                    );
                } else {
                    values.push(AxisValue::Int(int_of(item)?));
                }
            }
            values
        }
        ValueKind::Float => {
            let mut values = Vec::new();
            for item in items {
                if let Some(m) = p.range_float.captures(item) {
                    let start = float_of(&m[1])?;
                    let end = float_of(&m[2])?;
                    let step = m.get(3).map_or(Ok(1.0), |s| float_of(s.as_str()))?;
                    let range = np_arange(start, end + step, step)?;
                    check_size(range.len())?;
                    values.extend(range.into_iter().map(AxisValue::Float));
                } else if let Some(m) = p.count_float.captures(item) {
                    let start = float_of(&m[1])?;
                    let end = float_of(&m[2])?;
                    let num = m.get(3).map_or(Ok(1), |n| int_of(n.as_str()))?;
                    check_size(usize::try_from(num).unwrap_or(usize::MAX))?;
                    values.extend(
                        np_linspace(start, end, num as usize)
                            .into_iter()
                            .map(AxisValue::Float),
                    );
                } else {
                    values.push(AxisValue::Float(float_of(item)?));
                }
            }
            values
        }
        ValueKind::Str => items.iter().cloned().map(AxisValue::Str).collect(),
        ValueKind::Permutations => {
            if items.len() > 7 {
                let orderings = (1..=items.len())
                    .try_fold(1usize, |product, n| product.checked_mul(n))
                    .map_or_else(|| "too many".to_string(), |n| n.to_string());
                return Err(ValueError(format!(
                    "{} tokens make {orderings} orderings",
                    items.len()
                )));
            }
            permutations(items)
                .into_iter()
                .map(AxisValue::Order)
                .collect()
        }
    };
    check_size(values.len())?;
    Ok(values)
}

/// The error of a range whose end is past the largest integer.
fn too_large(item: &str) -> ValueError {
    ValueError(format!("{item}: the range ends past the largest integer"))
}

fn check_size(count: usize) -> Result<(), ValueError> {
    if count > MAX_VALUES {
        return Err(ValueError(format!(
            "{count} values are more than the {MAX_VALUES} an axis may have"
        )));
    }
    Ok(())
}

/// `itertools.permutations(items)`: every ordering, in lexicographic order of positions.
fn permutations(items: &[String]) -> Vec<Vec<String>> {
    if items.is_empty() {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            all.push(tail);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzz findings (fuzz/crashes/xyz_values): integer overflow in the counts.
    #[test]
    fn ranges_and_orderings_past_the_integers_are_refused_not_overflowed() {
        let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let error = expand(ValueKind::Permutations, &words).unwrap_err();
        assert!(error.0.contains("too many orderings"), "{}", error.0);
        let eight: Vec<String> = words[..8].to_vec();
        let error = expand(ValueKind::Permutations, &eight).unwrap_err();
        assert!(error.0.contains("40320 orderings"), "{}", error.0);
        for text in [
            "1-9223372036854775807",
            "-9223372036854775808-9223372036854775806",
            "1-5 [-3]",
        ] {
            assert!(
                expand(ValueKind::Int, &csv_values(text)).is_err(),
                "{text} was accepted"
            );
        }
        assert_eq!(
            ints("9223372036854775805-9223372036854775806"),
            [9223372036854775805, 9223372036854775806]
        );
        assert_eq!(
            ints("9223372036854775800-9223372036854775806 (+1000)"),
            [9223372036854775800]
        );
    }

    fn ints(text: &str) -> Vec<i64> {
        expand(ValueKind::Int, &csv_values(text))
            .unwrap()
            .into_iter()
            .map(|v| match v {
                AxisValue::Int(i) => i,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn floats(text: &str) -> Vec<f64> {
        expand(ValueKind::Float, &csv_values(text))
            .unwrap()
            .into_iter()
            .map(|v| match v {
                AxisValue::Float(f) => f,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_spec_examples() {
        assert_eq!(ints("1-5"), vec![1, 2, 3, 4, 5]);
        assert_eq!(ints("1-10 (+3)"), vec![1, 4, 7, 10]);
        assert_eq!(ints("10-1 (-3)"), vec![10, 7, 4]);
        assert_eq!(ints("1-10 [4]"), vec![1, 4, 7, 10]);
        assert_eq!(ints("10, 20,30"), vec![10, 20, 30]);
        let shown: Vec<String> = expand(ValueKind::Float, &csv_values("0.3-0.7 [5]"))
            .unwrap()
            .iter()
            .map(AxisValue::display)
            .collect();
        assert_eq!(shown, ["0.3", "0.4", "0.5", "0.6", "0.7"]);
        assert_eq!(floats("5-9 (+2)"), vec![5.0, 7.0, 9.0]);
        // numpy's arange may give one value past the end.
        assert_eq!(floats("0-0.3 (+0.1)").len(), 4);
    }

    #[test]
    fn python_number_rules() {
        assert_eq!(py_int(" +1_000 "), Some(1000));
        assert_eq!(py_int("1__0"), None);
        assert_eq!(py_int("- 5"), None);
        assert_eq!(py_int("5.0"), None);
        assert_eq!(py_float("1e-5"), Some(1e-5));
        assert_eq!(py_float("Infinity"), Some(f64::INFINITY));
        assert_eq!(py_float("1_0.5"), Some(10.5));
        assert_eq!(py_float("--1"), None);
        // A1111's float pattern reads `1e-5` as a range from "1e" to 5: an error.
        assert!(expand(ValueKind::Float, &["1e-5".into()]).is_err());
    }

    #[test]
    fn csv_quoting_and_lines() {
        assert_eq!(csv_values("a, \"b, c\" ,d"), vec!["a", "b, c", "d"]);
        assert_eq!(csv_values("\"say \"\"hi\"\"\""), vec!["say \"hi\""]);
        assert_eq!(csv_values("a,\nb"), vec!["a", "", "b"]);
        assert_eq!(csv_values(""), Vec::<String>::new());
        assert_eq!(csv_values("x,"), vec!["x", ""]);
    }

    #[test]
    fn orderings_are_itertools_order() {
        let orders = expand(ValueKind::Permutations, &csv_values("a, b, c")).unwrap();
        assert_eq!(orders.len(), 6);
        assert_eq!(
            orders[1],
            AxisValue::Order(vec!["a".into(), "c".into(), "b".into()])
        );
        assert_eq!(orders[5].display(), "c, b, a");
    }

    #[test]
    fn floats_display_rounded_as_python() {
        assert_eq!(AxisValue::Float(0.30000000000000004).display(), "0.3");
        assert_eq!(AxisValue::Float(7.0).display(), "7.0");
        assert_eq!(AxisValue::Float(1e-9).display(), "0.0");
    }
}
