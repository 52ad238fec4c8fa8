//! The inert values a restricted pickle rebuilds: Python's plain data, containers, and
//! references to tensors and storages. Nothing here can run code.

use std::cell::RefCell;
use std::rc::Rc;
use tch::Kind;

/// A value rebuilt from a pickle.
///
/// Containers are shared (`Rc`), as in Python: pickles memoise a container and refer to it
/// again, and cloning a value never copies a container's contents.
#[derive(Clone)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A larger int, as little-endian two's-complement bytes (torch's legacy magic number).
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes (or a Python 2 str that is not UTF-8).
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list, or a set (shared: pickles fill memoised lists).
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict or `OrderedDict`, in insertion order (shared like lists).
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// An allowed Python global used as a value (a class as a dict key, a dtype), not called.
    Global(String, String),
    /// A storage reference from `persistent_load`: element kind and storage key.
    Storage(Kind, String),
    /// A tensor view of a storage.
    Tensor(TensorRef),
    /// An instance of an allowed class (`ParameterDict`, `ModelCheckpoint`, a numpy array):
    /// its qualified class name and the state its `BUILD` set (`None` until then).
    Object(String, Rc<RefCell<Value>>),
    /// A `numpy.dtype` (numpy scalars in Lightning checkpoints carry one).
    NumpyDtype(Rc<RefCell<NumpyDtype>>),
}

/// A `numpy.dtype` as pickled: its type code (`f8`, `i4`...) and byte order.
#[derive(Clone, Debug)]
pub struct NumpyDtype {
    /// The type code the dtype was constructed with.
    pub code: String,
    /// Whether the values are big-endian (`>` in the pickled state).
    pub big_endian: bool,
}

/// Where a tensor's data lives: a view (offset, size, stride, in elements) of a storage.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub(super) kind: Kind,
    pub(super) key: String,
    pub(super) offset: i64,
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
}

impl TensorRef {
    /// The element dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[i64] {
        &self.size
    }

    /// The key of the storage it views.
    pub fn storage_key(&self) -> &str {
        &self.key
    }

    /// The number of elements.
    pub fn numel(&self) -> i64 {
        self.size.iter().product()
    }
}

impl Value {
    /// Looks `key` up when this is a dict with string keys (the last entry wins, as in Python),
    /// or in an allowed object's state.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(items) => items
                .borrow()
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v.clone()),
            Value::Object(_, state) => state.borrow().get(key),
            _ => None,
        }
    }

    /// Values of a dict (or of an allowed container object's `_parameters`).
    pub fn dict_values(&self) -> Vec<Value> {
        match self {
            Value::Dict(items) => items.borrow().iter().map(|(_, v)| v.clone()).collect(),
            Value::Object(_, state) => state
                .borrow()
                .get("_parameters")
                .map(|p| p.dict_values())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The Python type name, for error messages (values themselves are never printed: a
    /// hostile pickle can make them arbitrarily large).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(..) => "global",
            Value::Storage(..) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Object(..) => "object",
            Value::NumpyDtype(_) => "numpy.dtype",
        }
    }
}

/// Shallow on purpose: a hostile pickle can nest or share values so that a full print would
/// never end.
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) if s.len() <= 80 => write!(f, "{s:?}"),
            Value::Global(m, n) => write!(f, "{m}.{n}"),
            Value::Tensor(t) => write!(f, "tensor {:?} {:?}", t.kind, t.size),
            Value::Tuple(items) => write!(f, "tuple of {}", items.len()),
            Value::List(items) => write!(f, "list of {}", items.borrow().len()),
            Value::Dict(items) => write!(f, "dict of {}", items.borrow().len()),
            Value::Object(class, _) => write!(f, "{class} object"),
            other => f.write_str(other.type_name()),
        }
    }
}

/// A tensor's storage range, checked: the elements `[first, end)` of its storage that the view
/// `t` reads, or why the view does not fit in `numel` elements.
pub(crate) fn view_span(t: &TensorRef, numel: i64) -> Result<(i64, i64), String> {
    if t.offset < 0 || t.size.iter().chain(&t.stride).any(|&d| d < 0) {
        return Err("negative offset, size or stride".into());
    }
    if t.size.contains(&0) {
        return Ok((0, 0));
    }
    let too_large = || "size or stride too large".to_string();
    let mut last = t.offset;
    let mut count: i64 = 1;
    for (&size, &stride) in t.size.iter().zip(&t.stride) {
        last = (size - 1)
            .checked_mul(stride)
            .and_then(|d| last.checked_add(d))
            .ok_or_else(too_large)?;
        count = count.checked_mul(size).ok_or_else(too_large)?;
    }
    if last >= numel {
        return Err(format!(
            "the view reaches element {last} of a storage of {numel} elements"
        ));
    }
    // Zero strides repeat elements: a small storage may not expand into a huge tensor.
    if count > numel.max(1 << 24) {
        return Err(format!(
            "a view of {count} elements over a storage of {numel} elements"
        ));
    }
    Ok((t.offset, last + 1))
}
