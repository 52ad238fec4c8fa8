//! Extra networks: the `<lora:…>` and `<hypernet:…>` tags of a prompt, the files they name and
//! what applying them does to the networks (A1111's `modules/extra_networks.py`).
//!
//! The data path: [`parse_prompts`] takes the tags out of the positive prompts (the first
//! prompt's tags are the batch's set), [`catalog`] finds the files they name in an A1111
//! `models/` tree, [`lora`] patches the loaded weights and [`hypernetwork`] sets the UNet's
//! attention hook.

pub mod catalog;
pub mod dirs;
pub mod facts;
pub mod hypernetwork;
pub mod lora;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

/// A1111's `re_extra_net`: a tag is `<type:args>`, `type` a word, `args` anything but `>`.
static EXTRA_NETWORK_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<(\w+):([^>]+)>").expect("valid regex"));

/// The arguments of one tag (`ExtraNetworkParams`): `:`-separated items, those of the form
/// `k=v` also available by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtraNetworkParams {
    /// Every item in order, as written.
    pub items: Vec<String>,
    /// The items without `=`.
    pub positional: Vec<String>,
    /// The `k=v` items.
    pub named: BTreeMap<String, String>,
}

impl ExtraNetworkParams {
    /// Splits `args` (the text after `<type:`) on `:`.
    pub fn new(args: &str) -> Self {
        let items: Vec<String> = args.split(':').map(str::to_string).collect();
        let mut positional = Vec::new();
        let mut named = BTreeMap::new();
        for item in &items {
            // Python's `item.split('=', 2)` is a named item only when it has exactly two parts.
            let parts: Vec<&str> = item.splitn(3, '=').collect();
            if let [key, value] = parts[..] {
                named.insert(key.to_string(), value.to_string());
            } else {
                positional.push(item.clone());
            }
        }
        Self {
            items,
            positional,
            named,
        }
    }
}

/// The tags of one prompt by network type (`lora`, `lyco`, `hypernet`, …), in prompt order.
pub type ExtraNetworkData = BTreeMap<String, Vec<ExtraNetworkParams>>;

/// A1111's `extra_networks.parse_prompt`: the prompt with its tags removed, and the tags.
pub fn parse_prompt(prompt: &str) -> (String, ExtraNetworkData) {
    let mut data = ExtraNetworkData::new();
    for captures in EXTRA_NETWORK_TAG.captures_iter(prompt) {
        data.entry(captures[1].to_string())
            .or_default()
            .push(ExtraNetworkParams::new(&captures[2]));
    }
    let stripped = EXTRA_NETWORK_TAG.replace_all(prompt, "").into_owned();
    (stripped, data)
}

/// A1111's `extra_networks.parse_prompts`: every prompt without its tags, and the tags of the
/// first prompt, which are the set the whole batch runs with.
pub fn parse_prompts(prompts: &[String]) -> (Vec<String>, ExtraNetworkData) {
    let mut first = None;
    let stripped = prompts
        .iter()
        .map(|prompt| {
            let (text, data) = parse_prompt(prompt);
            first.get_or_insert(data);
            text
        })
        .collect();
    (stripped, first.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_taken_out_and_split_as_a1111_does() {
        let (text, data) = parse_prompt(
            "a cat <lora:add_detail:0.5>, <lora:style:te=0.3:unet=0.8:dyn=4> <hypernet:anime>",
        );
        assert_eq!(text, "a cat ,  ");
        let loras = &data["lora"];
        assert_eq!(loras.len(), 2);
        assert_eq!(loras[0].positional, ["add_detail", "0.5"]);
        assert_eq!(loras[1].positional, ["style"]);
        assert_eq!(loras[1].named["te"], "0.3");
        assert_eq!(loras[1].named["dyn"], "4");
        assert_eq!(data["hypernet"][0].items, ["anime"]);
        // Not a tag: no word before the colon, or nothing after it.
        let (text, data) = parse_prompt("<:x> <a b:1> <lora:>");
        assert_eq!(text, "<:x> <a b:1> <lora:>");
        assert!(data.is_empty());
        // `a=b=c` splits into three parts, so it stays positional.
        assert_eq!(
            ExtraNetworkParams::new("n:a=b=c").positional,
            ["n", "a=b=c"]
        );
    }

    #[test]
    fn the_batch_runs_with_the_first_prompts_networks() {
        let prompts = ["x <lora:a:1>".to_string(), "y <lora:b:1>".to_string()];
        let (texts, data) = parse_prompts(&prompts);
        assert_eq!(texts, ["x ", "y "]);
        assert_eq!(data["lora"][0].positional, ["a", "1"]);
        assert_eq!(data["lora"].len(), 1);
    }
}
