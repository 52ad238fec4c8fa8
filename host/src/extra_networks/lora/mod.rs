//! LoRA and LyCORIS networks (A1111's `extensions-builtin/Lora/`): loading a network file,
//! matching its keys to the checkpoint's layers and patching their weights.

pub mod modules;
