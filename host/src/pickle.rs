//! A restricted reader for PyTorch's pickle files (`torch.save` zip archives: `.pt`, `.bin`,
//! later `.ckpt`). It rebuilds tensors and plain containers only: any other Python global in
//! the pickle is refused, so a malicious file cannot run code.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Kind, Tensor};

/// Errors of the restricted unpickler.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The file is not a `torch.save` zip archive (or lacks its `data.pkl`).
    #[error(
        "{path}: not a PyTorch zip archive ({reason}); legacy (pre-1.6) torch files are not read"
    )]
    NotTorchZip { path: PathBuf, reason: String },
    /// The pickle names a Python callable outside the allowed tensor-rebuilding set.
    #[error("{path}: refused to load: the pickle calls `{module}.{name}`, which is not a tensor constructor (the file may be malicious)")]
    RefusedGlobal {
        path: PathBuf,
        module: String,
        name: String,
    },
    /// The pickle stream is malformed or uses an opcode this reader does not know.
    #[error("{path}: malformed pickle: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// The pickle has no recognisable embedding in it.
    #[error("{path}: no embedding tensor found (expected `string_to_param` or a single tensor)")]
    NoEmbedding { path: PathBuf },
}

/// A value rebuilt from a pickle.
#[derive(Clone, Debug)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list (shared: pickles mutate memoised lists).
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict, in insertion order (shared like lists).
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// An allowed Python global, not yet called.
    Global(String, String),
    /// A storage reference from `persistent_load`: element kind and archive key.
    Storage(Kind, String),
    /// A tensor view of a storage.
    Tensor(TensorRef),
    /// An instance of an allowed container class with its state (`ParameterDict`).
    Object(String, Box<Value>),
}

/// Where a tensor's data lives in the archive.
#[derive(Clone, Debug)]
pub struct TensorRef {
    kind: Kind,
    key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl Value {
    /// Looks `key` up when this is a dict with string keys.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(items) => items
                .borrow()
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v.clone()),
            Value::Object(_, state) => state.get(key),
            _ => None,
        }
    }

    /// Values of a dict (or of an allowed container object's `_parameters`).
    pub fn dict_values(&self) -> Vec<Value> {
        match self {
            Value::Dict(items) => items.borrow().iter().map(|(_, v)| v.clone()).collect(),
            Value::Object(_, state) => state
                .get("_parameters")
                .map(|p| p.dict_values())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// A parsed `torch.save` archive: the unpickled root and the archive to read storages from.
pub struct TorchFile {
    path: PathBuf,
    archive: zip::ZipArchive<std::fs::File>,
    prefix: String,
    /// The unpickled root object.
    pub root: Value,
}

impl TorchFile {
    /// Opens and unpickles `path`, refusing any global outside the tensor-rebuilding set.
    pub fn open(path: &Path) -> Result<Self, PickleError> {
        let not_zip = |reason: String| PickleError::NotTorchZip {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| not_zip(e.to_string()))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| not_zip(e.to_string()))?;
        let pkl_name = archive
            .file_names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .ok_or_else(|| not_zip("no data.pkl".into()))?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
        let mut bytes = Vec::new();
        archive
            .by_name(&pkl_name)
            .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
            .map_err(|e| not_zip(e.to_string()))?;
        let root = Unpickler {
            path,
            data: &bytes,
            pos: 0,
        }
        .run()?;
        Ok(Self {
            path: path.to_path_buf(),
            archive,
            prefix,
            root,
        })
    }

    /// Reads the data of a tensor reference into a CPU tensor.
    pub fn tensor(&mut self, t: &TensorRef) -> Result<Tensor, PickleError> {
        let malformed = |reason: String| PickleError::Malformed {
            path: self.path.clone(),
            reason,
        };
        let name = format!("{}data/{}", self.prefix, t.key);
        let mut bytes = Vec::new();
        self.archive
            .by_name(&name)
            .map_err(|e| malformed(format!("{name}: {e}")))?
            .read_to_end(&mut bytes)
            .map_err(|e| malformed(format!("{name}: {e}")))?;
        let elem = t.kind.elt_size_in_bytes();
        let numel = (bytes.len() / elem) as i64;
        // The view must stay inside the storage.
        let last = t.offset
            + t.size
                .iter()
                .zip(&t.stride)
                .map(|(s, st)| (s - 1).max(0) * st)
                .sum::<i64>();
        if t.size.iter().any(|&s| s < 0) || (t.size.iter().all(|&s| s > 0) && last >= numel) {
            return Err(malformed(format!("tensor view exceeds its storage {name}")));
        }
        let storage = Tensor::f_from_data_size(&bytes[..numel as usize * elem], &[numel], t.kind)
            .map_err(|e| malformed(e.to_string()))?;
        storage
            .f_as_strided(&t.size, &t.stride, t.offset)
            .map(|v| v.contiguous())
            .map_err(|e| malformed(e.to_string()))
    }
}

/// The vectors of an A1111/textual-inversion `.pt` embedding.
pub fn embedding_vectors(path: &Path) -> Result<Tensor, PickleError> {
    let mut file = TorchFile::open(path)?;
    let root = file.root.clone();
    let candidate = match root.get("string_to_param") {
        Some(params) => params.dict_values().into_iter().next(),
        None => {
            let values = root.dict_values();
            (values.len() == 1).then(|| values[0].clone())
        }
    };
    match candidate {
        Some(Value::Tensor(t)) => file.tensor(&t),
        _ => Err(PickleError::NoEmbedding {
            path: path.to_path_buf(),
        }),
    }
}

const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"),
    ("torch.nn.modules.container", "ParameterDict"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("builtins", "set"),
    ("__builtin__", "set"),
];

fn storage_kind(name: &str) -> Option<Kind> {
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

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl Unpickler<'_> {
    fn malformed(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            path: self.path.to_path_buf(),
            reason: format!("{} at byte {}", reason.into(), self.pos),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| self.malformed("truncated"))?;
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.malformed("unterminated line"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes)
            .map(Value::Str)
            .map_err(|_| self.malformed("invalid UTF-8 string"))
    }

    fn global(&self, module: String, name: String) -> Result<Value, PickleError> {
        let allowed = ALLOWED_GLOBALS
            .iter()
            .any(|(m, n)| *m == module && *n == name)
            || (module == "torch" && storage_kind(&name).is_some());
        if allowed {
            Ok(Value::Global(module, name))
        } else {
            Err(PickleError::RefusedGlobal {
                path: self.path.to_path_buf(),
                module,
                name,
            })
        }
    }

    fn call(&self, callable: Value, args: Vec<Value>) -> Result<Value, PickleError> {
        let Value::Global(module, name) = callable else {
            return Err(self.malformed("call of a non-callable"));
        };
        let ints = |v: &Value| -> Option<Vec<i64>> {
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
        };
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") => match args.as_slice() {
                [Value::Storage(kind, key), Value::Int(offset), size, stride, ..] => {
                    let (size, stride) = ints(size)
                        .zip(ints(stride))
                        .filter(|(a, b)| a.len() == b.len())
                        .ok_or_else(|| self.malformed("bad tensor size/stride"))?;
                    Ok(Value::Tensor(TensorRef {
                        kind: *kind,
                        key: key.clone(),
                        offset: *offset,
                        size,
                        stride,
                    }))
                }
                _ => Err(self.malformed("bad _rebuild_tensor_v2 arguments")),
            },
            ("builtins" | "__builtin__", "set") => {
                let items = match args.into_iter().next() {
                    Some(Value::List(l)) => l.borrow().clone(),
                    Some(Value::Tuple(t)) => t,
                    _ => Vec::new(),
                };
                Ok(Value::List(Rc::new(RefCell::new(items))))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args
                .into_iter()
                .next()
                .ok_or_else(|| self.malformed("bad _rebuild_parameter arguments")),
            ("collections", "OrderedDict") => Ok(Value::Dict(Rc::default())),
            (_, class) => Ok(Value::Object(class.to_string(), Box::new(Value::None))),
        }
    }

    fn run(mut self) -> Result<Value, PickleError> {
        let mut stack: Vec<Value> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        macro_rules! pop {
            () => {
                stack
                    .pop()
                    .ok_or_else(|| self.malformed("stack underflow"))?
            };
        }
        macro_rules! pop_mark {
            () => {{
                let m = marks.pop().ok_or_else(|| self.malformed("missing MARK"))?;
                if m > stack.len() {
                    return Err(self.malformed("MARK above stack"));
                }
                stack.split_off(m)
            }};
        }
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                } // PROTO
                0x95 => {
                    self.take(8)?;
                } // FRAME
                b'.' => {
                    return stack
                        .pop()
                        .ok_or_else(|| self.malformed("empty stack at STOP"))
                }
                b'(' => marks.push(stack.len()),
                b'}' => stack.push(Value::Dict(Rc::default())),
                b']' => stack.push(Value::List(Rc::default())),
                b')' => stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = pop_mark!();
                    stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Value::Tuple(items));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    stack.push(v);
                }
                b'J' => stack.push(Value::Int(i32::from_le_bytes(
                    self.take(4)?.try_into().expect("4"),
                ) as i64)),
                b'K' => stack.push(Value::Int(self.u8()? as i64)),
                b'M' => stack.push(Value::Int(u16::from_le_bytes(
                    self.take(2)?.try_into().expect("2"),
                ) as i64)),
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(self.malformed("integer too large"));
                    }
                    let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(bytes);
                    stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => stack.push(Value::Float(f64::from_be_bytes(
                    self.take(8)?.try_into().expect("8"),
                ))),
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    stack.push(Value::Bytes(self.take(n)?.to_vec()));
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    stack.push(Value::Bytes(self.take(n)?.to_vec()));
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    memo.insert(
                        i,
                        stack
                            .last()
                            .ok_or_else(|| self.malformed("empty stack"))?
                            .clone(),
                    );
                }
                b'r' => {
                    let i = self.u32()?;
                    memo.insert(
                        i,
                        stack
                            .last()
                            .ok_or_else(|| self.malformed("empty stack"))?
                            .clone(),
                    );
                }
                0x94 => {
                    let i = memo.len() as u32;
                    memo.insert(
                        i,
                        stack
                            .last()
                            .ok_or_else(|| self.malformed("empty stack"))?
                            .clone(),
                    );
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        self.u8()? as u32
                    } else {
                        self.u32()?
                    };
                    let v = memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| self.malformed("unknown memo"))?;
                    stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    stack.push(self.global(module, name)?);
                }
                0x93 => {
                    let name = pop!();
                    let module = pop!();
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => stack.push(self.global(m, n)?),
                        _ => return Err(self.malformed("STACK_GLOBAL of non-strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = match pop!() {
                        Value::Tuple(items) => items,
                        _ => return Err(self.malformed("call arguments are not a tuple")),
                    };
                    let callable = pop!();
                    stack.push(self.call(callable, args)?);
                }
                b'Q' => {
                    let pid = match pop!() {
                        Value::Tuple(items) => items,
                        _ => return Err(self.malformed("persistent id is not a tuple")),
                    };
                    match pid.as_slice() {
                        [Value::Str(tag), Value::Global(_, class), Value::Str(key), ..]
                            if tag == "storage" =>
                        {
                            let kind = storage_kind(class)
                                .ok_or_else(|| self.malformed("unknown storage type"))?;
                            stack.push(Value::Storage(kind, key.clone()));
                        }
                        _ => return Err(self.malformed("unsupported persistent id")),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = pop!();
                        let k = pop!();
                        vec![k, v]
                    } else {
                        pop_mark!()
                    };
                    if items.len() % 2 != 0 {
                        return Err(self.malformed("odd SETITEMS"));
                    }
                    match stack.last() {
                        Some(Value::Dict(d)) => {
                            let mut d = d.borrow_mut();
                            for pair in items.chunks(2) {
                                d.push((pair[0].clone(), pair[1].clone()));
                            }
                        }
                        _ => return Err(self.malformed("SETITEM on a non-dict")),
                    }
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![pop!()]
                    } else {
                        pop_mark!()
                    };
                    match stack.last() {
                        Some(Value::List(l)) => l.borrow_mut().extend(items),
                        _ => return Err(self.malformed("APPEND on a non-list")),
                    }
                }
                b'b' => {
                    let state = pop!();
                    match stack.last_mut() {
                        Some(Value::Object(_, s)) => **s = state,
                        // OrderedDict and tensors carry no state we use.
                        Some(Value::Dict(_)) | Some(Value::Tensor(_)) => {}
                        _ => return Err(self.malformed("BUILD on an unsupported object")),
                    }
                }
                other => return Err(self.malformed(format!("unsupported opcode 0x{other:02x}"))),
            }
        }
    }
}
