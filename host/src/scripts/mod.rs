//! A1111's scripts (`scripts/*.py` of the img2img and txt2img tabs).

pub mod loopback;
pub mod matched_noise;
pub mod outpainting;
pub mod outpainting_mk2;
pub mod poor_mans_outpainting;
pub mod prompt_matrix;
pub mod prompts_from_file;
