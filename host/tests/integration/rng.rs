//! Generator objects and A1111's per-image noise vs torch.Generator and an ImageRNG written in
//! Python from the spec: bit-identical draws, independent state across threads, CUDA if present.

use crate::common::{read_tensors, run_reference};
use sdhost::rng::{Generator, ImageRng, RngError, Variation};
use serde_json::json;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

const SEEDS: [u64; 4] = [0, 1234, 4_294_967_293, (1 << 63) + 5];

/// Draws of one generator in order: odd shapes, sizes below and above the 16 elements where
/// CPU randn switches algorithms, and every floating kind.
fn draw_plan() -> Vec<(Vec<i64>, Kind)> {
    vec![
        (vec![4, 5, 7], Kind::Float),
        (vec![4, 64, 64], Kind::Float),
        (vec![1], Kind::Float),
        (vec![3], Kind::Float),
        (vec![2, 3, 16], Kind::Double),
        (vec![17], Kind::Float),
        (vec![4, 5, 7], Kind::Float),
        (vec![5, 9], Kind::Half),
        (vec![3, 11], Kind::BFloat16),
        (vec![4, 64, 64], Kind::Float),
    ]
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        other => panic!("no reference dtype for {other:?}"),
    }
}

/// Runs the reference on `spec` and returns its tensors.
fn reference(spec: serde_json::Value) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    let output = dir.path().join("out.safetensors");
    std::fs::write(&input, spec.to_string()).unwrap();
    run_reference("rng_reference.py", &[input.as_os_str(), output.as_os_str()]);
    read_tensors(&output)
}

fn assert_identical(name: &str, actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.size(), expected.size(), "{name}: shape");
    assert_eq!(actual.kind(), expected.kind(), "{name}: kind");
    let actual = actual.to_device(Device::Cpu);
    assert!(
        actual.equal(expected),
        "{name}: not bit-identical, max abs difference {}",
        (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    );
}

/// Checks every generator seed's draw plan against `torch.Generator(device)`.
fn check_generators(device: Device, device_name: &str) {
    let plan = draw_plan();
    let draws: Vec<_> = plan
        .iter()
        .map(|(shape, kind)| json!({"shape": shape, "dtype": dtype_name(*kind)}))
        .collect();
    let generators: Vec<_> = SEEDS
        .iter()
        .map(|seed| json!({"seed": seed, "draws": draws}))
        .collect();
    let expected = reference(json!({"device": device_name, "generators": generators}));
    for (i, &seed) in SEEDS.iter().enumerate() {
        let mut generator = Generator::new(seed, device).unwrap();
        assert_eq!(generator.device(), device);
        for (j, (shape, kind)) in plan.iter().enumerate() {
            let actual = generator.randn(shape, *kind).unwrap();
            assert_eq!(actual.device(), device);
            assert_identical(
                &format!("seed {seed} draw {j} {shape:?} {kind:?}"),
                &actual,
                &expected[&format!("gen/{i}/{j}")],
            );
        }
        // manual_seed restarts the stream, cached Box-Muller halves included.
        generator.manual_seed(seed).unwrap();
        for (j, (shape, kind)) in plan.iter().take(4).enumerate() {
            let again = generator.randn(shape, *kind).unwrap();
            assert_identical(
                &format!("seed {seed} reseeded draw {j}"),
                &again,
                &expected[&format!("gen/{i}/{j}")],
            );
        }
    }
    println!(
        "{} seeds x {} draws bit-identical on {device_name}",
        SEEDS.len(),
        plan.len()
    );
}

struct ImageCase {
    name: &'static str,
    seeds: Vec<u64>,
    shape: [i64; 3],
    variation: Variation,
    ensd: i64,
    calls: usize,
}

fn image_cases() -> Vec<ImageCase> {
    let plain = |name, seeds: &[u64], shape, ensd| ImageCase {
        name,
        seeds: seeds.to_vec(),
        shape,
        variation: Variation::default(),
        ensd,
        calls: 4,
    };
    let varied = |name, seeds: &[u64], shape, subseeds: &[u64], strength, resize_from| ImageCase {
        name,
        seeds: seeds.to_vec(),
        shape,
        variation: Variation {
            subseeds: subseeds.to_vec(),
            strength,
            resize_from,
        },
        ensd: 0,
        calls: 3,
    };
    vec![
        plain("single", &[1234], [4, 64, 64], 0),
        plain("batch", &[7, 8, 9], [4, 5, 7], 0),
        plain("big_seeds", &[4_294_967_293, (1 << 63) + 5], [4, 8, 8], 0),
        plain("ensd", &[1234, 1235], [4, 64, 64], 31337),
        // 5 - 10 wraps below zero, as Generator.manual_seed(-5) does.
        plain("ensd_negative", &[5, 6], [4, 5, 7], -10),
        varied(
            "variation",
            &[100, 100],
            [4, 12, 10],
            &[200, 201],
            0.3,
            None,
        ),
        varied("variation_full", &[100], [4, 12, 10], &[200], 1.0, None),
        // A variation seed equal to the seed takes slerp's near-parallel linear branch.
        varied("variation_parallel", &[42], [4, 6, 6], &[42], 0.25, None),
        // Fewer subseeds than images: the rest use 0.
        varied("variation_short", &[3, 4, 5], [4, 6, 9], &[11], 0.6, None),
        // Pastes in y (margin 1), crops in x (margin -1).
        varied("resize", &[77, 78], [4, 8, 10], &[], 0.0, Some((48, 96))),
        // Crops in y by an odd margin (floor division), pastes at 0 in x.
        varied("resize_odd", &[5], [4, 6, 6], &[], 0.0, Some((80, 40))),
        // A size equal to the image's is no resize.
        varied("resize_same", &[9], [4, 8, 10], &[], 0.0, Some((64, 80))),
        varied(
            "resize_variation",
            &[31, 32],
            [4, 9, 7],
            &[61, 62],
            0.5,
            Some((56, 72)),
        ),
    ]
}

#[test]
fn generator_draws_match_torch_generator() {
    check_generators(Device::Cpu, "cpu");
}

#[test]
fn image_rng_matches_a1111_image_rng() {
    let cases = image_cases();
    let spec: Vec<_> = cases
        .iter()
        .map(|case| {
            json!({
                "name": case.name,
                "seeds": case.seeds,
                "shape": case.shape,
                "subseeds": case.variation.subseeds,
                "strength": case.variation.strength,
                "resize_from": case.variation.resize_from.map(|(h, w)| [h, w]),
                "ensd": case.ensd,
                "calls": case.calls,
            })
        })
        .collect();
    let expected = reference(json!({"device": "cpu", "image_rngs": spec}));
    for case in &cases {
        let mut rng = ImageRng::new(&case.seeds, case.shape, Device::Cpu)
            .unwrap()
            .with_variation(case.variation.clone())
            .with_ensd(case.ensd);
        for k in 0..case.calls {
            let noise = rng.next().unwrap();
            let [c, h, w] = case.shape;
            assert_eq!(noise.size(), [case.seeds.len() as i64, c, h, w]);
            assert_identical(
                &format!("{} call {k}", case.name),
                &noise,
                &expected[&format!("img/{}/{k}", case.name)],
            );
        }
    }
    println!("{} ImageRNG cases bit-identical", cases.len());
}

#[test]
fn image_rng_first_then_next_and_batch_independence() {
    let mut rng = ImageRng::new(&[10, 11], [4, 5, 7], Device::Cpu).unwrap();
    let first = rng.first().unwrap();
    let second = rng.next().unwrap();
    // Each image's noise is its own generator's stream, whatever the batch around it.
    let mut alone = Generator::new(11, Device::Cpu).unwrap();
    assert!(first
        .get(1)
        .equal(&alone.randn(&[4, 5, 7], Kind::Float).unwrap()));
    assert!(second
        .get(1)
        .equal(&alone.randn(&[4, 5, 7], Kind::Float).unwrap()));
    // With ENSD the draws after the first come from seed + delta.
    let mut rng = ImageRng::new(&[10], [4, 5, 7], Device::Cpu)
        .unwrap()
        .with_ensd(31337);
    let _initial = rng.first().unwrap();
    let mut delta = Generator::new(10 + 31337, Device::Cpu).unwrap();
    assert!(rng
        .next()
        .unwrap()
        .get(0)
        .equal(&delta.randn(&[4, 5, 7], Kind::Float).unwrap()));
}

#[test]
fn generators_on_threads_do_not_interfere() {
    const THREADS: u64 = 8;
    const DRAWS: usize = 40;
    let shape = [4, 64, 64];
    let expected: Vec<Vec<Tensor>> = (0..THREADS)
        .map(|t| {
            let mut generator = Generator::new(1000 + t, Device::Cpu).unwrap();
            (0..DRAWS)
                .map(|_| generator.randn(&shape, Kind::Float).unwrap())
                .collect()
        })
        .collect();
    // Generators made here and moved into the threads (Send), drawn concurrently, while the
    // global generator is reseeded and drawn on as well.
    let generators: Vec<Generator> = (0..THREADS)
        .map(|t| Generator::new(1000 + t, Device::Cpu).unwrap())
        .collect();
    let handles: Vec<_> = generators
        .into_iter()
        .map(|mut generator| {
            std::thread::spawn(move || {
                (0..DRAWS)
                    .map(|i| {
                        if i % 5 == 0 {
                            tch::manual_seed(i as i64);
                            let _ = Tensor::randn([1000], (Kind::Float, Device::Cpu));
                        }
                        generator.randn(&shape, Kind::Float).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, handle) in handles.into_iter().enumerate() {
        let draws = handle.join().unwrap();
        for (i, draw) in draws.iter().enumerate() {
            assert!(draw.equal(&expected[t][i]), "thread {t} draw {i} differs");
        }
    }
    // Two generators of the same seed interleaved on one thread keep separate streams.
    let mut a = Generator::new(5, Device::Cpu).unwrap();
    let mut b = Generator::new(5, Device::Cpu).unwrap();
    let a1 = a.randn(&[4, 5, 7], Kind::Float).unwrap();
    let a2 = a.randn(&[4, 5, 7], Kind::Float).unwrap();
    let b1 = b.randn(&[4, 5, 7], Kind::Float).unwrap();
    assert!(a1.equal(&b1));
    assert!(!a1.equal(&a2));
}

#[test]
fn invalid_requests_are_errors() {
    let mut generator = Generator::new(1, Device::Cpu).unwrap();
    assert!(matches!(
        generator.randn(&[2], Kind::Int64),
        Err(RngError::UnsupportedKind(Kind::Int64))
    ));
    match generator.randn(&[2, -3], Kind::Float) {
        Err(RngError::Torch(message)) => println!("negative size: {message}"),
        other => panic!("expected a libtorch error, got {other:?}"),
    }
    assert!(matches!(
        Generator::new(1, Device::Mps),
        Err(RngError::UnsupportedDevice(Device::Mps))
    ));
    assert!(matches!(
        ImageRng::new(&[], [4, 8, 8], Device::Cpu),
        Err(RngError::NoSeeds)
    ));
    assert!(matches!(
        ImageRng::new(&[1], [4, -8, 8], Device::Cpu),
        Err(RngError::InvalidShape(_))
    ));
    // The generator still works after the failed calls.
    let mut fresh = Generator::new(1, Device::Cpu).unwrap();
    assert!(generator
        .randn(&[3], Kind::Float)
        .unwrap()
        .equal(&fresh.randn(&[3], Kind::Float).unwrap()));
}

#[test]
fn cuda_generator_matches_torch_generator() {
    if !tch::Cuda::is_available() {
        match Generator::new(0, Device::Cuda(0)) {
            Err(RngError::Torch(message)) => {
                println!("skipped: CUDA is not available (Generator::new says: {message})")
            }
            other => panic!("expected an error without CUDA, got {other:?}"),
        }
        return;
    }
    check_generators(Device::Cuda(0), "cuda");
    let count = tch::Cuda::device_count() as usize;
    match Generator::new(0, Device::Cuda(count)) {
        Err(RngError::Torch(message)) => println!("device {count}: {message}"),
        other => panic!("expected an error for a missing device, got {other:?}"),
    }
    let mut rng = ImageRng::new(&[1234, 1235], [4, 64, 64], Device::Cuda(0))
        .unwrap()
        .with_ensd(31337);
    let first = rng.next().unwrap();
    assert_eq!(first.device(), Device::Cuda(0));
    let mut own = Generator::new(1235, Device::Cuda(0)).unwrap();
    assert!(first
        .get(1)
        .equal(&own.randn(&[4, 64, 64], Kind::Float).unwrap()));
}

#[test]
fn nv_source_matches_a1111_philox() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nv.safetensors");
    run_reference("philox_reference.py", &[out.as_os_str()]);
    let expected = read_tensors(&out);
    let mut compared = 0;
    for seed in [0u64, 1234, 4294967293, (1 << 40) + 7] {
        for shape in [[4i64, 8, 8], [4, 5, 7]] {
            let mut generator = sdhost::rng::Philox::new(seed);
            for k in 0..3 {
                let name = format!("nv/{seed}/{}x{}x{}/{k}", shape[0], shape[1], shape[2]);
                let draw = generator.randn(&shape).unwrap();
                assert_identical(&name, &draw, &expected[&name]);
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 24);
}

#[test]
fn image_rng_with_nv_source_draws_each_images_philox_stream() {
    use sdhost::rng::{Philox, RngSource};
    let seeds = [11u64, 4294967293];
    let shape = [4i64, 5, 7];
    let mut rng = ImageRng::with_source(&seeds, shape, RngSource::Nv)
        .unwrap()
        .with_ensd(31337);
    let first = rng.first().unwrap();
    let next = rng.next().unwrap();
    for (i, &seed) in seeds.iter().enumerate() {
        let own = Philox::new(seed).randn(&shape).unwrap();
        assert_identical("nv first", &first.get(i as i64), &own);
        // With ENSD, later draws come from a fresh generator of seed + ENSD.
        let ensd = Philox::new(seed + 31337).randn(&shape).unwrap();
        assert_identical("nv next after ENSD", &next.get(i as i64), &ensd);
    }
}
