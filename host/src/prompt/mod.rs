//! Prompt conditioning: A1111 prompt syntax, CLIP tokenisation, chunking and encoding.

pub mod cache;
pub mod chunks;
pub mod clean;
pub mod conditioning;
pub mod editing;
pub mod embeddings;
pub mod emphasis;
pub mod marker;
pub mod tokenizer;
