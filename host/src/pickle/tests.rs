//! Unit tests of the restricted machine on hand-written streams: the opcodes real files use in
//! every protocol, the allow-listed rebuilders, and the bounds.

use super::allow_list::Dialect;
use super::machine::unpickle;
use super::value::{view_span, TensorRef, Value};
use super::PickleError;
use std::path::Path;
use tch::Kind;

fn run(bytes: &[u8]) -> Result<Value, PickleError> {
    unpickle(Path::new("test.pt"), bytes, 0, Dialect::Checkpoint).map(|u| u.root)
}

#[test]
fn protocol_0_text_opcodes_rebuild_plain_data() {
    // {'a': (1, 2.5, True, u'\u00e9'), 'b': [None, 'x\n']} as Python 3 writes it in protocol 0.
    let stream =
        b"(dp0\nVa\np1\n(I1\nF2.5\nI01\nV\\u00e9\np2\ntp3\nsVb\np4\n(lp5\nNaS'x\\n'\np6\nas.";
    let root = run(stream).unwrap();
    let Some(Value::Tuple(a)) = root.get("a") else {
        panic!("{root:?}")
    };
    assert!(matches!(a[0], Value::Int(1)));
    assert!(matches!(a[1], Value::Float(x) if x == 2.5));
    assert!(matches!(a[2], Value::Bool(true)));
    assert!(matches!(&a[3], Value::Str(s) if s == "é"));
    let Some(Value::List(b)) = root.get("b") else {
        panic!("{root:?}")
    };
    assert!(matches!(&b.borrow()[1], Value::Str(s) if s == "x\n"));
}

#[test]
fn allowed_rebuilders_give_inert_values() {
    // numpy.core.multiarray.scalar(numpy.dtype('f8') with BUILD, _codecs.encode(latin-1 text)).
    let mut stream = b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbc_codecs\nencode\nX".to_vec();
    let text: String = 0.25f64
        .to_le_bytes()
        .iter()
        .map(|&b| char::from(b))
        .collect();
    stream.extend((text.len() as u32).to_le_bytes());
    stream.extend(text.as_bytes());
    stream.extend(b"X\x06\x00\x00\x00latin1\x86R\x86R.");
    assert!(matches!(run(&stream).unwrap(), Value::Float(x) if x == 0.25));
    // torch.Size((2, 3)) and set([1]).
    let size = run(b"\x80\x02ctorch\nSize\nK\x02K\x03\x86\x85R.").unwrap();
    assert!(matches!(size, Value::Tuple(t) if t.len() == 2));
    let set = run(b"\x80\x02c__builtin__\nset\n]K\x01a\x85R.").unwrap();
    assert!(matches!(set, Value::List(l) if l.borrow().len() == 1));
}

#[test]
fn refusals_name_what_was_refused() {
    let err = run(b"cos\nsystem\n(S'true'\ntR.").unwrap_err();
    assert!(
        matches!(&err, PickleError::RefusedGlobal { module, name, .. } if module == "os" && name == "system"),
        "{err}"
    );
    let err = run(b"\x80\x02ctorch\nHalfStorage\n)R.").unwrap_err();
    assert!(err.to_string().contains("torch.HalfStorage"), "{err}");
    // A persistent id for a pickled nn.Module (legacy files could carry source code).
    let err = run(b"\x80\x02X\x06\x00\x00\x00moduleN\x86Q.").unwrap_err();
    assert!(err.to_string().contains("nn.Module"), "{err}");
}

#[test]
fn shared_and_nested_containers_are_bounded() {
    // A tuple of a tuple of ... 300 deep.
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend([0x85; 300]);
    deep.push(b'.');
    assert!(run(&deep)
        .unwrap_err()
        .to_string()
        .contains("nested deeper"));
    // Doubling through the memo: t(k+1) = (t(k), t(k)) stays shared, never copied.
    let mut doubling = b"\x80\x02)q\x00".to_vec();
    for _ in 0..60 {
        doubling.extend(b"h\x00h\x00\x86q\x00");
    }
    doubling.push(b'.');
    assert!(matches!(run(&doubling).unwrap(), Value::Tuple(_)));
    // A dict changed after it went into a list.
    let err = run(b"\x80\x02]}q\x00ah\x00K\x01K\x02s.").unwrap_err();
    assert!(err.to_string().contains("already inside"), "{err}");
}

#[test]
fn tensor_views_must_fit_their_storage() {
    let view = |offset, size: &[i64], stride: &[i64]| TensorRef {
        kind: Kind::Float,
        key: "0".into(),
        offset,
        size: size.to_vec(),
        stride: stride.to_vec(),
    };
    assert_eq!(view_span(&view(2, &[2, 3], &[3, 1]), 8), Ok((2, 8)));
    assert_eq!(view_span(&view(0, &[3, 2], &[1, 3]), 6), Ok((0, 6)));
    assert_eq!(view_span(&view(5, &[0, 4], &[4, 1]), 1), Ok((0, 0)));
    assert!(view_span(&view(3, &[2, 3], &[3, 1]), 8).is_err());
    assert!(view_span(&view(0, &[i64::MAX, 2], &[2, 1]), 8).is_err());
    assert!(view_span(&view(0, &[1 << 30, 1 << 30], &[0, 0]), 8).is_err());
    assert!(view_span(&view(-1, &[1], &[1]), 8).is_err());
}

fn run_script(bytes: &[u8]) -> Result<Value, PickleError> {
    unpickle(Path::new("test.pt"), bytes, 0, Dialect::TorchScript).map(|u| u.root)
}

#[test]
fn torchscript_module_objects_are_inert_and_only_in_archives_with_code() {
    // A `__torch__` module made by NEWOBJ without arguments, its attributes set by BUILD from
    // a dict, one attribute a submodule shared through the memo, one typed by
    // `torch.jit._pickle.restore_type_tag`.
    let stream = b"\x80\x02c__torch__.m\nRoot\n)\x81}(X\x01\x00\x00\x00ac__torch__.m\nLeaf\n)\x81}X\x01\x00\x00\x00wK\x07sbq\x00X\x01\x00\x00\x00bh\x00X\x01\x00\x00\x00cctorch.jit._pickle\nrestore_type_tag\nK\x02X\x03\x00\x00\x00int\x86RX\x08\x00\x00\x00trainingI00\nub.";
    let root = run_script(stream).unwrap();
    assert!(matches!(&root, Value::Object(class, _) if class == "__torch__.m.Root"));
    let (Some(a), Some(b)) = (root.get("a"), root.get("b")) else {
        panic!("{root:?}")
    };
    assert!(matches!(a.get("w"), Some(Value::Int(7))));
    assert!(matches!(b.get("w"), Some(Value::Int(7))));
    assert!(matches!(root.get("c"), Some(Value::Int(2))));
    // A plain checkpoint pickle may not name the same class.
    let err = run(stream).unwrap_err();
    assert!(
        matches!(&err, PickleError::RefusedGlobal { module, .. } if module == "__torch__.m"),
        "{err}"
    );
    // Nor may a TorchScript pickle name anything outside the allow-list and `__torch__`.
    let err = run_script(b"cos\nsystem\n(S'true'\ntR.").unwrap_err();
    assert!(matches!(&err, PickleError::RefusedGlobal { module, .. } if module == "os"));
    let err = run_script(b"\x80\x02c__torch__\nC\n)\x81.").unwrap_err();
    assert!(matches!(&err, PickleError::RefusedGlobal { .. }), "{err}");
    // A script class is never called with arguments, nor built from anything but a dict.
    let err = run_script(b"\x80\x02c__torch__.m\nC\nK\x01\x85\x81.").unwrap_err();
    assert!(err.to_string().contains("with arguments"), "{err}");
    let err = run_script(b"\x80\x02c__torch__.m\nC\n)\x81K\x01b.").unwrap_err();
    assert!(err.to_string().contains("BUILD"), "{err}");
}
