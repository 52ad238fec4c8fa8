//! Prompt editing `[from:to:when]` and alternation `[a|b]`, scheduled per model call as A1111
//! schedules them (`modules/prompt_parser.py:
//! get_learned_conditioning_prompt_schedules`), and `AND` with weights.
//!
//! The parser follows A1111's grammar: plain text, emphasis brackets kept as written, scheduled
//! and alternate groups, and stray bracket characters allowed at the top level only. A prompt
//! the grammar rejects is used unchanged for every step, as in A1111; so is one whose bracket
//! groups nest deeper than [`MAX_NESTING`].

use super::marker::split_at;
use regex::Regex;
use std::collections::HashMap;
use std::sync::LazyLock;

/// The deepest nesting of bracket groups the parser follows. Deeper, the prompt is used
/// unchanged: the parser recurses once per level and runs on the job's thread, whose stack
/// a 20,000-character prompt of brackets would overflow (A1111's tree transformer, recursing
/// per level too, stops at Python's recursion limit).
pub const MAX_NESTING: usize = 100;

/// One entry of a prompt's schedule: `text` is used for model calls up to `end_at_step`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledText {
    /// Last model call (counted from 0, inclusive) this text applies to.
    pub end_at_step: usize,
    /// The prompt text with editing and alternation resolved.
    pub text: String,
}

/// The schedule of `prompt` over `steps` model calls (`N`, or `2N` for second-order samplers).
pub fn prompt_schedule(prompt: &str, steps: usize) -> Vec<ScheduledText> {
    let Some(tree) = Parser::new(prompt).parse_start() else {
        return vec![ScheduledText {
            end_at_step: steps,
            text: prompt.to_string(),
        }];
    };
    let mut boundaries = vec![steps];
    collect_steps(&tree, steps, &mut boundaries);
    boundaries.sort_unstable();
    boundaries.dedup();
    boundaries
        .into_iter()
        .map(|step| ScheduledText {
            end_at_step: step,
            text: render(&tree, step, steps),
        })
        .collect()
}

/// The entry for model call `call` (0-based): the first that has not ended, else the first
/// (A1111's fallback when a sampler makes more calls than scheduled).
pub fn text_at_call(schedule: &[ScheduledText], call: usize) -> &ScheduledText {
    schedule
        .iter()
        .find(|entry| call <= entry.end_at_step)
        .unwrap_or(&schedule[0])
}

/// A prompt split at `AND`: each part's text and weight (`part :1.5`).
pub fn split_and(prompt: &str) -> Vec<(String, f64)> {
    static AND: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bAND\b").expect("valid regex"));
    static WEIGHT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^((?s:.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$").expect("valid regex")
    });
    split_at(prompt, "AND", &AND)
        .into_iter()
        .map(|part| match WEIGHT.captures(part) {
            Some(c) => (
                c[1].to_string(),
                c.get(2)
                    .and_then(|w| w.as_str().parse().ok())
                    .unwrap_or(1.0),
            ),
            None => (part.to_string(), 1.0),
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Node {
    /// Text kept as written: plain text, whitespace, brackets of emphasis, stray characters.
    Text(String),
    /// Emphasis brackets with their content (kept in the output, parsed later for weights).
    Group(Vec<Node>),
    /// `[before:after:when]`; `when` is the number as written.
    Scheduled {
        before: Vec<Node>,
        after: Vec<Node>,
        when: String,
    },
    /// `[a|b|…]`.
    Alternate(Vec<Vec<Node>>),
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    /// Bracket groups open around the current position.
    depth: usize,
    /// Whether a group nested deeper than [`MAX_NESTING`].
    too_deep: bool,
    /// Each group's parse by its start: the node and where it ends, or `None` when no group
    /// starts there. The parser backtracks (a failed group is text, and the top level goes on
    /// after it), and without this a run of unclosed brackets is parsed again from each of
    /// them: 9 s for 10,000 characters.
    groups: HashMap<usize, Option<(Node, usize)>>,
}

impl Parser {
    fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
            pos: 0,
            depth: 0,
            too_deep: false,
            groups: HashMap::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `start: (prompt | /[][():]/+)*` — stray brackets and colons are text at the top level.
    fn parse_start(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        while self.pos < self.chars.len() {
            let before = self.pos;
            let mut part = self.parse_prompt()?;
            if self.too_deep {
                return None;
            }
            nodes.append(&mut part);
            if self.pos == before {
                match self.peek() {
                    Some(c @ ('[' | ']' | '(' | ')' | ':')) => {
                        self.pos += 1;
                        nodes.push(Node::Text(c.to_string()));
                    }
                    _ => return None,
                }
            }
        }
        Some(nodes)
    }

    /// `prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*`; stops before a
    /// character it cannot take, trying each bracket group and backtracking when it fails.
    fn parse_prompt(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        loop {
            match self.peek() {
                None | Some(']' | ')' | ':' | '|') => return Some(nodes),
                Some('(') | Some('[') => {
                    let start = self.pos;
                    match self.parse_group() {
                        Some(node) => nodes.push(node),
                        None => {
                            self.pos = start;
                            return Some(nodes);
                        }
                    }
                }
                Some(_) => {
                    let text = self.parse_plain()?;
                    nodes.push(Node::Text(text));
                }
            }
        }
    }

    /// `plain: /([^\\\[\]():|]|\\.)+/` (whitespace included).
    fn parse_plain(&mut self) -> Option<String> {
        let mut text = String::new();
        while let Some(c) = self.peek() {
            match c {
                '[' | ']' | '(' | ')' | ':' | '|' => break,
                '\\' => {
                    let next = *self.chars.get(self.pos + 1)?;
                    text.push('\\');
                    text.push(next);
                    self.pos += 2;
                }
                _ => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
        (!text.is_empty()).then_some(text)
    }

    /// A bracket group starting here, parsed once per start (see `groups`).
    fn parse_group(&mut self) -> Option<Node> {
        let start = self.pos;
        if let Some(known) = self.groups.get(&start) {
            let (node, end) = known.clone()?;
            self.pos = end;
            return Some(node);
        }
        self.depth += 1;
        let node = if self.depth > MAX_NESTING {
            self.too_deep = true;
            None
        } else {
            self.parse_new_group()
        };
        self.depth -= 1;
        let known = node.clone().map(|node| (node, self.pos));
        self.groups.insert(start, known);
        node
    }

    fn parse_new_group(&mut self) -> Option<Node> {
        if self.eat('(') {
            // emphasized: "(" prompt ")" | "(" prompt ":" prompt ")"
            let mut inner = vec![Node::Text("(".into())];
            inner.append(&mut self.parse_prompt()?);
            if self.eat(':') {
                inner.push(Node::Text(":".into()));
                inner.append(&mut self.parse_prompt()?);
            }
            if !self.eat(')') {
                return None;
            }
            inner.push(Node::Text(")".into()));
            return Some(Node::Group(inner));
        }
        if !self.eat('[') {
            return None;
        }
        let first = self.parse_prompt()?;
        if self.eat(':') {
            // scheduled: "[" [prompt ":"] prompt ":" [WS] NUMBER [WS] "]"
            let after_colon = self.pos;
            if let Some(when) = self.parse_when() {
                return Some(Node::Scheduled {
                    before: Vec::new(),
                    after: first,
                    when,
                });
            }
            self.pos = after_colon;
            let second = self.parse_prompt()?;
            if !self.eat(':') {
                return None;
            }
            let when = self.parse_when()?;
            return Some(Node::Scheduled {
                before: first,
                after: second,
                when,
            });
        }
        if self.peek() == Some('|') {
            // alternate: "[" prompt ("|" [prompt])+ "]"
            let mut options = vec![first];
            while self.eat('|') {
                options.push(self.parse_prompt()?);
            }
            return self.eat(']').then_some(Node::Alternate(options));
        }
        // emphasized: "[" prompt "]"
        if !self.eat(']') {
            return None;
        }
        let mut inner = vec![Node::Text("[".into())];
        inner.extend(first);
        inner.push(Node::Text("]".into()));
        Some(Node::Group(inner))
    }

    /// `[WHITESPACE] NUMBER [WHITESPACE] "]"`, returning the number as written.
    fn parse_when(&mut self) -> Option<String> {
        static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
                .expect("valid regex")
        });
        // Only the characters the pattern can match, up to the first `]`: the whole rest of a
        // long prompt at every `:` would be quadratic.
        let mut rest = String::new();
        for &c in &self.chars[self.pos..] {
            rest.push(c);
            let numeric = c.is_whitespace() || c.is_numeric() || "+-.eE".contains(c);
            if c == ']' || !numeric {
                break;
            }
        }
        let caps = NUMBER.captures(&rest)?;
        self.pos += caps[0].chars().count();
        Some(caps[1].to_string())
    }
}

/// The boundary step of a `when` as written: fractions (with a '.') of `steps`, else absolute.
fn boundary(when: &str, steps: usize) -> i64 {
    let v: f64 = when.parse().unwrap_or(0.0);
    let v = if when.contains('.') {
        v * steps as f64
    } else {
        v
    };
    (steps as i64).min(v as i64)
}

fn collect_steps(nodes: &[Node], steps: usize, out: &mut Vec<usize>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Group(inner) => collect_steps(inner, steps, out),
            Node::Scheduled {
                before,
                after,
                when,
            } => {
                collect_steps(before, steps, out);
                collect_steps(after, steps, out);
                let b = boundary(when, steps);
                if b >= 1 {
                    out.push(b as usize);
                }
            }
            Node::Alternate(options) => {
                for option in options {
                    collect_steps(option, steps, out);
                }
                out.extend(1..=steps);
            }
        }
    }
}

fn render(nodes: &[Node], step: usize, steps: usize) -> String {
    let mut out = String::new();
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Group(inner) => out.push_str(&render(inner, step, steps)),
            Node::Scheduled {
                before,
                after,
                when,
            } => {
                let text = if step as i64 <= boundary(when, steps) {
                    before
                } else {
                    after
                };
                out.push_str(&render(text, step, steps));
            }
            Node::Alternate(options) => {
                let pick = (step as i64 - 1).rem_euclid(options.len() as i64) as usize;
                out.push_str(&render(&options[pick], step, steps));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(prompt: &str, steps: usize) -> Vec<(usize, String)> {
        prompt_schedule(prompt, steps)
            .into_iter()
            .map(|e| (e.end_at_step, e.text))
            .collect()
    }

    fn v(items: &[(usize, &str)]) -> Vec<(usize, String)> {
        items.iter().map(|(s, t)| (*s, t.to_string())).collect()
    }

    #[test]
    fn spec_examples() {
        assert_eq!(sched("a [b:3]", 10), v(&[(3, "a "), (10, "a b")]));
        assert_eq!(sched("a [b:c:1.0]", 10), v(&[(10, "a b")]));
        assert_eq!(sched("a [b:c:1]", 10), v(&[(1, "a b"), (10, "a c")]));
        assert_eq!(
            sched("[a:b:0.25] x [c:d:7]", 10),
            v(&[(2, "a x c"), (7, "b x c"), (10, "b x d")])
        );
    }

    #[test]
    fn a1111_docstring_cases() {
        assert_eq!(sched("test", 10), v(&[(10, "test")]));
        assert_eq!(sched("a [b::3]", 10), v(&[(3, "a b"), (10, "a ")]));
        assert_eq!(sched("[(a:2):3]", 10), v(&[(3, ""), (10, "(a:2)")]));
        assert_eq!(
            sched("((a][:b:c [d:3]", 10),
            v(&[(3, "((a][:b:c "), (10, "((a][:b:c d")])
        );
        assert_eq!(
            sched("[a|(b:1.1)]", 4),
            v(&[(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")])
        );
        assert_eq!(
            sched("[fe|]male", 3),
            v(&[(1, "female"), (2, "male"), (3, "female")])
        );
        assert_eq!(
            sched("[fe|||]male", 4),
            v(&[(1, "female"), (2, "male"), (3, "male"), (4, "male")])
        );
        assert_eq!(
            sched("a [b:c:0.5] [d|e]", 2),
            v(&[(1, "a b d"), (2, "a c e")])
        );
        assert_eq!(
            sched("[[a|b]:c:2]", 4),
            v(&[(1, "a"), (2, "b"), (3, "c"), (4, "c")])
        );
    }

    #[test]
    fn rejected_prompts_are_used_unchanged() {
        assert_eq!(sched("a | b", 5), v(&[(5, "a | b")]));
        assert_eq!(sched("trailing \\", 5), v(&[(5, "trailing \\")]));
        assert_eq!(
            sched("(emphasis:1.2) kept", 5),
            v(&[(5, "(emphasis:1.2) kept")])
        );
    }

    #[test]
    fn nesting_past_the_limit_is_used_unchanged() {
        let nested = |levels: usize| format!("{}[a:b:2]{}", "(".repeat(levels), ")".repeat(levels));
        let parens = |levels: usize| ("(".repeat(levels), ")".repeat(levels));
        let (open, close) = parens(MAX_NESTING - 1);
        assert_eq!(
            sched(&nested(MAX_NESTING - 1), 4),
            v(&[
                (2, &format!("{open}a{close}")),
                (4, &format!("{open}b{close}"))
            ])
        );
        let deep = nested(MAX_NESTING);
        assert_eq!(sched(&deep, 4), v(&[(4, &deep)]));
    }

    #[test]
    fn long_runs_of_brackets_parse_on_a_small_stack() {
        // At the daemon's prompt limit (20,000 characters), on a thread with the 2 MiB stack
        // std gives spawned threads: once an overflow that killed the daemon, and 9 s already
        // at 10,000 characters.
        let prompts = [
            "(a".repeat(10_000),
            "[a".repeat(10_000),
            "[a:".repeat(6_666),
            format!("{}x{}", "(".repeat(10_000), ")".repeat(9_999)),
            "(a)[b|c]".repeat(2_500),
        ];
        let schedules = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || prompts.map(|p| prompt_schedule(&p, 20).len()))
            .unwrap()
            .join()
            .expect("no overflow");
        assert_eq!(schedules, [1, 1, 1, 1, 20]);
    }

    #[test]
    fn selection_per_model_call() {
        let s = prompt_schedule("a [b:3]", 10);
        let texts: Vec<&str> = (0..12).map(|k| text_at_call(&s, k).text.as_str()).collect();
        assert_eq!(&texts[..5], &["a ", "a ", "a ", "a ", "a b"]);
        assert_eq!(
            texts[11], "a ",
            "past the schedule A1111 falls back to the first entry"
        );
        let alt = prompt_schedule("[a|b]", 4);
        let texts: Vec<&str> = (0..5)
            .map(|k| text_at_call(&alt, k).text.as_str())
            .collect();
        assert_eq!(texts, ["a", "a", "b", "a", "b"]);
    }

    #[test]
    fn and_with_weights() {
        assert_eq!(
            split_and("a cat AND a dog :1.5 AND (x:1.2)"),
            // Leading spaces stay, as in A1111; the tokenizer drops them.
            vec![
                ("a cat".to_string(), 1.0),
                (" a dog".to_string(), 1.5),
                (" (x:1.2)".to_string(), 1.0)
            ]
        );
        assert_eq!(
            split_and("BANDANA AND_PERP x"),
            vec![("BANDANA AND_PERP x".to_string(), 1.0)]
        );
    }
}
