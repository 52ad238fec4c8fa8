//! The model upscalers of an A1111 `models/` tree by A1111's names (`modules/modelloader.py:
//! load_upscalers` over the `Upscaler` classes): `ESRGAN/` and `SwinIR/` (and `DAT/`) list every
//! model file by its stem; `RealESRGAN/` lists A1111's fixed Real-ESRGAN names
//! (`modules/realesrgan_model.py: get_realesrgan_models`) whose file is there.

use crate::folder_walk::Visited;
use std::path::{Path, PathBuf};

/// The `Upscaler` class a model folder belongs to: it decides the names, the file
/// extensions and the tiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpscalerClass {
    /// `modules/esrgan_model.py: UpscalerESRGAN` (`models/ESRGAN`).
    Esrgan,
    /// `modules/realesrgan_model.py: UpscalerRealESRGAN` (`models/RealESRGAN`).
    RealEsrgan,
    /// `extensions-builtin/SwinIR: UpscalerSwinIR` (`models/SwinIR`).
    SwinIr,
    /// `modules/dat_model.py: UpscalerDAT` (`models/DAT`).
    Dat,
}

impl UpscalerClass {
    /// Every class, in the order their folders are listed.
    pub const ALL: [UpscalerClass; 4] = [
        UpscalerClass::Esrgan,
        UpscalerClass::RealEsrgan,
        UpscalerClass::SwinIr,
        UpscalerClass::Dat,
    ];

    /// The folder of an A1111 `models/` tree.
    pub fn folder(self) -> &'static str {
        match self {
            UpscalerClass::Esrgan => "ESRGAN",
            UpscalerClass::RealEsrgan => "RealESRGAN",
            UpscalerClass::SwinIr => "SwinIR",
            UpscalerClass::Dat => "DAT",
        }
    }

    /// The extensions A1111 lists (`find_models(ext_filter=…)`), and `.safetensors`, which
    /// spandrel reads and sdhost lists too.
    fn extensions(self) -> &'static [&'static str] {
        match self {
            UpscalerClass::RealEsrgan => &["pth"],
            _ => &["pt", "pth", "safetensors"],
        }
    }

    /// Whether A1111 tiles this class with `upscale_2` (`tiled_upscale_2`) rather than
    /// `upscale_with_model` (`split_grid`/`combine_grid`).
    pub fn tiles_in_float(self) -> bool {
        matches!(self, UpscalerClass::SwinIr | UpscalerClass::Dat)
    }
}

/// A1111's Real-ESRGAN list: name, the stem of its release file, scale.
pub const REAL_ESRGAN_MODELS: [(&str, &str, u32); 6] = [
    ("R-ESRGAN General 4xV3", "realesr-general-x4v3", 4),
    ("R-ESRGAN General WDN 4xV3", "realesr-general-wdn-x4v3", 4),
    ("R-ESRGAN AnimeVideo", "realesr-animevideov3", 4),
    ("R-ESRGAN 4x+", "RealESRGAN_x4plus", 4),
    ("R-ESRGAN 4x+ Anime6B", "RealESRGAN_x4plus_anime_6B", 4),
    ("R-ESRGAN 2x+", "RealESRGAN_x2plus", 2),
];

/// One model upscaler: A1111's `UpscalerData` of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUpscaler {
    /// The name A1111 lists (file stem, or the Real-ESRGAN name).
    pub name: String,
    /// The model file.
    pub path: PathBuf,
    /// Its class.
    pub class: UpscalerClass,
    /// `UpscalerData.scale` as `/sdapi/v1/upscalers` reports it (ESRGAN and SwinIR 4, the
    /// Real-ESRGAN table's, DAT none).
    pub listed_scale: Option<u32>,
}

/// The folders of each upscaler class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpscalerDirs {
    /// Folders per class, searched recursively.
    pub folders: Vec<(UpscalerClass, PathBuf)>,
}

impl UpscalerDirs {
    /// The folders of an A1111 `models/` tree (missing ones are searched as empty).
    pub fn from_models_dir(models: &Path) -> Self {
        Self {
            folders: UpscalerClass::ALL
                .iter()
                .map(|class| (*class, models.join(class.folder())))
                .collect(),
        }
    }

    /// Every model upscaler, in A1111's order: sorted by lower-case name, stable.
    pub fn scan(&self) -> Vec<ModelUpscaler> {
        let mut found = Vec::new();
        for (class, folder) in &self.folders {
            let files = walk(folder, class.extensions(), &mut Visited::default());
            if *class == UpscalerClass::RealEsrgan {
                for (name, stem, scale) in REAL_ESRGAN_MODELS {
                    // A1111 takes the first local file whose path ends with the release name.
                    let suffix = format!("{stem}.pth");
                    if let Some(path) = files
                        .iter()
                        .find(|p| p.to_string_lossy().ends_with(&suffix))
                    {
                        found.push(ModelUpscaler {
                            name: name.to_string(),
                            path: path.clone(),
                            class: *class,
                            listed_scale: Some(scale),
                        });
                    }
                }
                continue;
            }
            for path in files {
                let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                    continue;
                };
                let listed_scale = (*class != UpscalerClass::Dat).then_some(4);
                found.push(ModelUpscaler {
                    name: stem,
                    path,
                    class: *class,
                    listed_scale,
                });
            }
        }
        found.sort_by_key(|u| u.name.to_lowercase());
        found
    }
}

/// The files under `dir` (recursively, sorted, as `shared.walk_files` finds them) with one of
/// `extensions`.
fn walk(dir: &Path, extensions: &[&str], visited: &mut Visited) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !visited.first_visit(dir) {
        return out;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(walk(&path, extensions, visited));
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
        {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_give_a1111s_names_in_its_order() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path();
        for (folder, file) in [
            ("ESRGAN", "4x_foolhardy_Remacri.pth"),
            ("ESRGAN", "sub/BSRGAN.pt"),
            ("ESRGAN", "notes.txt"),
            ("SwinIR", "SwinIR_4x.safetensors"),
            ("RealESRGAN", "RealESRGAN_x4plus.pth"),
            ("RealESRGAN", "my-own.pth"),
            ("DAT", "DAT_x2.pth"),
        ] {
            let path = models.join(folder).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        let list = UpscalerDirs::from_models_dir(models).scan();
        let names: Vec<&str> = list.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "4x_foolhardy_Remacri",
                "BSRGAN",
                "DAT_x2",
                "R-ESRGAN 4x+",
                "SwinIR_4x"
            ]
        );
        assert_eq!(list[3].class, UpscalerClass::RealEsrgan);
        assert_eq!(
            (list[2].listed_scale, list[3].listed_scale),
            (None, Some(4))
        );
    }
}
