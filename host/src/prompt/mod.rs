//! Prompt conditioning: A1111 prompt syntax, CLIP tokenisation, chunking and encoding.

pub mod clean;
pub mod tokenizer;
