//! Prompt conditioning: A1111 prompt syntax, CLIP tokenisation, chunking and encoding.

pub mod clean;
pub mod emphasis;
pub mod schedule;
pub mod tokenizer;
