//! A1111's scripts (`scripts/*.py`) and the picture helpers they share from `modules/images.py`.

pub mod grid;
pub mod tiles;
