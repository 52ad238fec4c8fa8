//! Conditioning tensors vs A1111's math run in Python on transformers' CLIP (tiny model),
//! and textual-inversion loading, including a malicious pickle.

use crate::common;

use crate::common::{assert_close, read_tensors, run_reference};
use sdhost::prompt::chunks::{tokenize_line, TokenizedPrompt};
use sdhost::prompt::conditioning::Conditioner;
use sdhost::prompt::embeddings::EmbeddingDatabase;
use sdhost::tiny_model::save_safetensors;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn write_embedding(dir: &Path, name: &str, vectors: usize, seed: i64) {
    let t = sdhost::rng::with_global_seed(seed, || {
        Tensor::randn([vectors as i64, 32], (Kind::Float, Device::Cpu))
    });
    save_safetensors(
        &[("emb_params".to_string(), t)],
        &dir.join(format!("{name}.safetensors")),
    )
    .unwrap();
}

fn chunks_json(prompt: &TokenizedPrompt) -> serde_json::Value {
    prompt
        .chunks
        .iter()
        .map(|c| {
            serde_json::json!({
                "tokens": c.tokens,
                "multipliers": c.multipliers,
                "fixes": c.fixes.iter().map(|f| serde_json::json!([f.offset, f.embedding.name])).collect::<Vec<_>>(),
            })
        })
        .collect()
}

#[test]
fn conditioning_matches_a1111_math() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 21);
    let emb_dir = dir.path().join("embeddings");
    std::fs::create_dir(&emb_dir).unwrap();
    write_embedding(&emb_dir, "myemb", 3, 1);
    write_embedding(&emb_dir, "dongwm-nt", 2, 2);
    let db = EmbeddingDatabase::load_dir(&emb_dir, 32).unwrap();
    assert_eq!(db.len(), 2, "skipped: {:?}", db.skipped);

    let sd = common::load_fp32(&model);

    let long = "a red cat, ".repeat(30);
    let groups: Vec<(&str, usize, Vec<String>)> = vec![
        (
            "emphasis",
            1,
            vec!["a (cat:1.3) on [a mat], ((bird)) (neg:-0.5)".into()],
        ),
        (
            "emphasis_skip2",
            2,
            vec!["a (cat:1.3) on [a mat], ((bird))".into()],
        ),
        ("break", 1, vec!["a cat BREAK (a dog:1.2)".into()]),
        ("two_chunks", 1, vec![long.clone()]),
        (
            "embedding",
            1,
            vec!["photo of myemb, (myemb:1.2) sitting".into()],
        ),
        ("negative_embedding", 2, vec!["dongwm-nt, lowres".into()]),
        ("batch", 1, vec!["a (b:1.5)".into(), long, "c [d]".into()]),
    ];

    let mut groups_json = Vec::new();
    let mut ours = Vec::new();
    for (name, clip_skip, texts) in &groups {
        let tokenized: Vec<TokenizedPrompt> = texts.iter().map(|t| tokenize_line(t, &db)).collect();
        groups_json.push(serde_json::json!({
            "name": name, "clip_skip": clip_skip,
            "texts": tokenized.iter().map(chunks_json).collect::<Vec<_>>(),
        }));
        let conditioner = Conditioner::new(&sd.text, &db, *clip_skip);
        ours.push((
            name.to_string(),
            conditioner.encode_tokenized(&tokenized).crossattn,
        ));
    }
    let embedding = tokenize_line("photo of myemb, (myemb:1.2) sitting", &db);
    assert_eq!(
        embedding.chunks[0].fixes.len(),
        2,
        "both mentions of the embedding are found"
    );
    assert_eq!(
        embedding.chunks[0].multipliers[7..10],
        [1.2; 3],
        "an embedding takes its fragment's weight"
    );
    assert_eq!(
        tokenize_line(&"a red cat, ".repeat(30), &db).chunks.len(),
        2
    );

    let spec = serde_json::json!({
        "embeddings": {
            "myemb": emb_dir.join("myemb.safetensors"),
            "dongwm-nt": emb_dir.join("dongwm-nt.safetensors"),
        },
        "groups": groups_json,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = dir.path().join("reference.safetensors");
    run_reference(
        "conditioning_reference.py",
        &[model.as_os_str(), spec_path.as_os_str(), out.as_os_str()],
    );
    let reference = read_tensors(&out);
    for (name, tensor) in &ours {
        assert_close(name, tensor, &reference[name], TOLERANCE);
    }
}

#[test]
fn pickled_embeddings_load_and_malicious_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import os, sys, torch
from safetensors.torch import save_file
d = sys.argv[1]
torch.manual_seed(0)
v = torch.randn(2, 32)
save_file({"v": v}, os.path.join(d, "expected.safetensors"))
torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v.clone().requires_grad_(True)}, "name": "x", "step": 5}, os.path.join(d, "a1111.pt"))
torch.save({"string_to_token": {"*": 265}, "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(v.clone())})}, os.path.join(d, "olddict.pt"))
torch.save({"<token>": v[0].clone()}, os.path.join(d, "diffusers.bin"))
torch.save({"t": v.t().contiguous().t()}, os.path.join(d, "strided.pt"))
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.path.join(d, "PWNED"),))
torch.save({"string_to_param": {"*": Evil()}}, os.path.join(d, "evil.pt"))
"#;
    let status = std::process::Command::new(common::python())
        .args(["-c", script])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let expected = read_tensors(&dir.path().join("expected.safetensors"))["v"].shallow_clone();

    for (file, rows) in [
        ("a1111.pt", 2),
        ("olddict.pt", 2),
        ("diffusers.bin", 1),
        ("strided.pt", 2),
    ] {
        let e = sdhost::prompt::embeddings::load_embedding(&dir.path().join(file), 32)
            .unwrap_or_else(|err| panic!("{file}: {err}"));
        assert!(
            e.tensor().equal(&expected.narrow(0, 0, rows)),
            "{file}: wrong vectors"
        );
        assert_eq!(e.hash.len(), 12);
    }
    let err =
        sdhost::prompt::embeddings::load_embedding(&dir.path().join("evil.pt"), 32).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("refused") && text.contains("system"),
        "{text}"
    );
    assert!(
        !dir.path().join("PWNED").exists(),
        "the malicious pickle ran code"
    );

    // A folder with a bad file still loads the good ones and reports the bad one.
    std::fs::remove_file(dir.path().join("expected.safetensors")).unwrap();
    let db = EmbeddingDatabase::load_dir(dir.path(), 32).unwrap();
    assert_eq!(db.len(), 4);
    assert_eq!(db.skipped.len(), 1);
    assert!(db.skipped[0].contains("evil.pt"));
}

#[test]
fn schedules_and_padding() {
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path(), 22);
    let sd = common::load_fp32(&model);
    let db = EmbeddingDatabase::default();
    let c = Conditioner::new(&sd.text, &db, 1);

    // Computed once per job; each model call looks its conditioning up.
    let schedule = c.schedule("a [cat:dog:0.5]", 10).unwrap();
    assert_eq!(schedule.len(), 2);
    let both = c.encode_texts(&["a cat".into(), "a dog".into()]).unwrap();
    let first = sdhost::prompt::conditioning::cond_at_call(&schedule, 5);
    let second = sdhost::prompt::conditioning::cond_at_call(&schedule, 6);
    assert!(first.crossattn.equal(&both.get(0).crossattn));
    assert!(second.crossattn.equal(&both.get(1).crossattn));
    assert!(first.vector.is_none(), "SD 1.x has no vector input");

    let parts = c.multicond("a cat AND a dog :0.7", 10).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].weight, 0.7);

    let one_chunk = c.encode_texts(&["a cat".into()]).unwrap().get(0).crossattn;
    let padded = c.pad_to_chunks(&one_chunk, 2).unwrap();
    assert_eq!(padded.size(), [154, 32]);
    assert!(padded.narrow(0, 77, 77).equal(&c.empty_prompt().unwrap()));
    assert!(padded.narrow(0, 0, 77).equal(&one_chunk));
}
