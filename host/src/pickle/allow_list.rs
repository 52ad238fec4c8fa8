//! The Python globals a checkpoint pickle may name: A1111's `RestrictedUnpickler.find_class`
//! allow-list (`modules/safe.py`), plus the storage types of every dtype torch writes. Each is
//! rebuilt here as an inert value; nothing else is ever looked up, and nothing is executed.

use super::value::{NumpyDtype, TensorRef, Value};
use tch::Kind;

/// What an allowed global is, and so what the pickle may do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Allowed {
    /// `torch._utils._rebuild_tensor_v2`: a tensor view of a storage.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter[_with_state]`: a `Parameter` is its tensor.
    RebuildParameter,
    /// `collections.OrderedDict`: a dict.
    OrderedDict,
    /// `set` (Python 2 and 3 names): kept as a list.
    Set,
    /// `torch.Size`: a tuple of ints.
    Size,
    /// `numpy.core.multiarray.scalar`: a number from a dtype and its bytes.
    NumpyScalar,
    /// `numpy.dtype`: a dtype whose byte order `BUILD` sets.
    NumpyDtype,
    /// `_codecs.encode`: how protocol-2 pickles write `bytes`.
    CodecsEncode,
    /// A class instantiated as an inert object whose state `BUILD` sets.
    Class,
    /// Only ever referenced, never called: storage types (in persistent ids), `torch.float32`,
    /// Lightning's callback module and class used as dict keys.
    Inert,
    /// A TorchScript class (`__torch__.…`): a module object made without arguments whose
    /// `BUILD` sets its attributes from a dict. Its code is never looked at.
    ScriptObject,
    /// `torch.jit._pickle.restore_type_tag` and `build_{int,double,bool,tensor}list`: the
    /// TorchScript pickler's typing wrappers, which return their first argument.
    JitIdentity,
}

/// Which pickles a reader accepts: a checkpoint's (A1111's allow-list), or the module tree
/// of a TorchScript archive (`torch.jit.save`), which adds script objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `torch.save` files: the allow-list alone.
    Checkpoint,
    /// The `data.pkl` of an archive that has `code/` records: the allow-list, `__torch__.`
    /// classes as inert objects, and `torch.jit._pickle`'s identity wrappers.
    TorchScript,
}

/// Looks a global up in the allow-list of `dialect`.
pub(super) fn lookup(module: &str, name: &str, dialect: Dialect) -> Option<Allowed> {
    if dialect == Dialect::TorchScript {
        if module.starts_with("__torch__.") {
            return Some(Allowed::ScriptObject);
        }
        if module == "torch.jit._pickle"
            && matches!(
                name,
                "restore_type_tag"
                    | "build_intlist"
                    | "build_doublelist"
                    | "build_boollist"
                    | "build_tensorlist"
            )
        {
            return Some(Allowed::JitIdentity);
        }
    }
    Some(match (module, name) {
        ("collections", "OrderedDict") => Allowed::OrderedDict,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Allowed::RebuildParameter
        }
        ("torch._utils", "_rebuild_tensor_v2") => Allowed::RebuildTensor,
        ("torch", "Size") => Allowed::Size,
        ("torch", "float32") => Allowed::Inert,
        ("torch", storage) if storage_kind(storage).is_some() => Allowed::Inert,
        ("torch.nn.modules.container", "ParameterDict") => Allowed::Class,
        ("numpy.core.multiarray", "scalar") => Allowed::NumpyScalar,
        // `_reconstruct(ndarray, (0,), b'b')` makes an empty array that `BUILD` fills: kept as
        // an inert object holding its state (shape, dtype, raw bytes).
        ("numpy.core.multiarray", "_reconstruct") => Allowed::Class,
        ("numpy", "ndarray") => Allowed::Inert,
        ("numpy", "dtype") => Allowed::NumpyDtype,
        ("_codecs", "encode") => Allowed::CodecsEncode,
        ("pytorch_lightning.callbacks", "model_checkpoint") => Allowed::Inert,
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint") => Allowed::Class,
        ("__builtin__" | "builtins", "set") => Allowed::Set,
        _ => return None,
    })
}

/// The element dtype of a `torch.*Storage` type name.
pub(super) fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "DoubleStorage" => Kind::Double,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
pub(super) fn rebuild_tensor(args: &[Value]) -> Result<TensorRef, String> {
    let [Value::Storage(kind, key), Value::Int(offset), size, stride, ..] = args else {
        return Err("bad _rebuild_tensor_v2 arguments".into());
    };
    let (size, stride) = ints(size)
        .zip(ints(stride))
        .filter(|(a, b)| a.len() == b.len())
        .ok_or("bad tensor size/stride")?;
    Ok(TensorRef {
        kind: *kind,
        key: key.clone(),
        offset: *offset,
        size,
        stride,
    })
}

/// `torch.Size((d0, d1, ...))`.
pub(super) fn size(args: &[Value]) -> Result<Vec<Value>, String> {
    match args {
        [] => Ok(Vec::new()),
        [v @ Value::Tuple(_)] => Ok(ints(v)
            .ok_or("torch.Size of non-integers")?
            .into_iter()
            .map(Value::Int)
            .collect()),
        [Value::List(items)] => Ok(items.borrow().clone()),
        _ => Err("bad torch.Size arguments".into()),
    }
}

/// `numpy.dtype(code, align, copy)`.
pub(super) fn numpy_dtype(args: &[Value]) -> Result<NumpyDtype, String> {
    match args.first() {
        Some(Value::Str(code)) if code.len() <= 8 => Ok(NumpyDtype {
            code: code.clone(),
            big_endian: false,
        }),
        _ => Err("bad numpy.dtype arguments".into()),
    }
}

/// The byte order from a `numpy.dtype`'s `BUILD` state `(version, order, ...)`.
pub(super) fn numpy_dtype_state(dtype: &mut NumpyDtype, state: &Value) -> Result<(), String> {
    match state {
        Value::Tuple(items) => match items.get(1) {
            Some(Value::Str(order)) => {
                dtype.big_endian = order == ">";
                Ok(())
            }
            _ => Err("bad numpy.dtype state".into()),
        },
        _ => Err("bad numpy.dtype state".into()),
    }
}

/// `numpy.core.multiarray.scalar(dtype, bytes)`: the number, for the dtypes numbers come in.
pub(super) fn numpy_scalar(args: &[Value]) -> Result<Value, String> {
    let [Value::NumpyDtype(dtype), Value::Bytes(raw), ..] = args else {
        return Err("bad numpy scalar arguments".into());
    };
    let dtype = dtype.borrow();
    let mut bytes = raw.clone();
    if dtype.big_endian {
        bytes.reverse();
    }
    let width = match dtype.code.get(1..).and_then(|w| w.parse::<usize>().ok()) {
        Some(w) if w == bytes.len() && matches!(w, 1 | 2 | 4 | 8) => w,
        _ => return Err(format!("numpy scalar of dtype `{}`", dtype.code)),
    };
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(&bytes);
    let signed = |bits: u32| (i64::from_le_bytes(buf) << (64 - bits)) >> (64 - bits);
    Ok(match (&dtype.code[..1], width) {
        ("f", 8) => Value::Float(f64::from_le_bytes(buf)),
        ("f", 4) => Value::Float(f32::from_le_bytes(buf[..4].try_into().expect("4")) as f64),
        ("f", 2) => Value::Float(half::f16::from_le_bytes([buf[0], buf[1]]).to_f64()),
        ("i", w) => Value::Int(signed(8 * w as u32)),
        ("u", 8) => i64::try_from(u64::from_le_bytes(buf))
            .map(Value::Int)
            .map_err(|_| "numpy uint64 scalar too large".to_string())?,
        ("u", _) => Value::Int(i64::from_le_bytes(buf)),
        ("b", 1) => Value::Bool(buf[0] != 0),
        _ => return Err(format!("numpy scalar of dtype `{}`", dtype.code)),
    })
}

/// `_codecs.encode(text, encoding)`: protocol-2 pickles write `bytes` as latin-1 text.
pub(super) fn codecs_encode(args: &[Value]) -> Result<Value, String> {
    let (text, encoding) = match args {
        [Value::Str(text)] => (text, "utf-8".to_string()),
        [Value::Str(text), Value::Str(encoding), ..] => (text, encoding.to_ascii_lowercase()),
        _ => return Err("bad _codecs.encode arguments".into()),
    };
    match encoding.as_str() {
        "latin1" | "latin-1" | "iso-8859-1" => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Value::Bytes)
            .ok_or_else(|| "_codecs.encode: text outside latin-1".to_string()),
        "utf-8" | "utf8" => Ok(Value::Bytes(text.as_bytes().to_vec())),
        other => Err(format!("_codecs.encode to `{other}`")),
    }
}
