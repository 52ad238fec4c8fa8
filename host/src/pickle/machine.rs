//! The pickle virtual machine, restricted: it runs every opcode of protocols 0 to 5, but
//! looks up only allow-listed globals ([`super::allow_list`]) and calls them as inert
//! rebuilders, so no byte of a pickle can run code.
//!
//! It also bounds what a hostile stream could make it allocate or recurse into: containers
//! nest at most [`MAX_DEPTH`] deep (values are dropped recursively), a container stops
//! changing once it is inside another one (so nesting stays bounded and cycles cannot form),
//! and copies of memoised strings are budgeted.

use super::allow_list::{self, Allowed};
use super::text;
use super::value::{TensorRef, Value};
use super::PickleError;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use tch::Kind;

/// The deepest nesting of containers a pickle may build (a state dict needs three or four).
pub const MAX_DEPTH: u32 = 200;

/// One storage a pickle declared through `persistent_load`.
#[derive(Clone, Debug)]
pub(super) struct StorageDecl {
    /// The element dtype.
    pub kind: Kind,
    /// The number of elements the saver declared.
    pub numel: i64,
}

/// The result of one pickle: its object, where it ended, and the storages it referenced.
pub(super) struct Unpickled {
    pub root: Value,
    pub end: usize,
    pub storages: HashMap<String, StorageDecl>,
}

/// Unpickles the one pickle starting at `start` in `data`.
pub(super) fn unpickle(path: &Path, data: &[u8], start: usize) -> Result<Unpickled, PickleError> {
    let mut machine = Machine {
        path,
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        meta: HashMap::new(),
        keepalive: Vec::new(),
        copy_budget: (data.len().saturating_mul(8)).max(64 << 20),
        storages: HashMap::new(),
    };
    let root = machine.run()?;
    Ok(Unpickled {
        root,
        end: machine.pos,
        storages: std::mem::take(&mut machine.storages),
    })
}

#[derive(Clone, Copy)]
struct Meta {
    height: u32,
    sealed: bool,
}

struct Machine<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Height and sealed flag of every container, by its address.
    meta: HashMap<usize, Meta>,
    /// Every container made, so that no address is reused while `meta` describes it.
    keepalive: Vec<Value>,
    copy_budget: usize,
    storages: HashMap<String, StorageDecl>,
}

fn address(v: &Value) -> Option<usize> {
    Some(match v {
        Value::Tuple(rc) => Rc::as_ptr(rc) as *const () as usize,
        Value::List(rc) => Rc::as_ptr(rc) as *const () as usize,
        Value::Dict(rc) => Rc::as_ptr(rc) as *const () as usize,
        Value::Object(_, rc) => Rc::as_ptr(rc) as *const () as usize,
        _ => return None,
    })
}

/// At most 100 characters of a name from the file, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

impl Machine<'_> {
    fn malformed(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            path: self.path.to_path_buf(),
            reason: format!("{} (at byte {})", reason.into(), self.pos),
        }
    }

    fn refused(&self, what: impl Into<String>) -> PickleError {
        PickleError::Refused {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| self.malformed("truncated pickle"))?;
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.malformed("length too large"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.malformed("unterminated line"))?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(line)
    }

    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes)
            .map(Value::Str)
            .map_err(|_| self.malformed("invalid UTF-8 string"))
    }

    /// A Python 2 `str`: text when it is UTF-8, bytes otherwise.
    fn py2_str(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?.to_vec();
        Ok(match String::from_utf8(bytes) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        })
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("missing MARK"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("MARK above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<Value, PickleError> {
        self.stack
            .last()
            .cloned()
            .ok_or_else(|| self.malformed("empty stack"))
    }

    /// Charges a copy of a memoised string against the budget.
    fn charge(&mut self, v: &Value) -> Result<(), PickleError> {
        let n = match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) | Value::BigInt(b) => b.len(),
            _ => 0,
        };
        self.copy_budget = self
            .copy_budget
            .checked_sub(n)
            .ok_or_else(|| self.malformed("too many copies of memoised strings"))?;
        Ok(())
    }

    /// Marks `child` as inside another container and returns its height.
    fn seal(&mut self, child: &Value) -> u32 {
        match address(child).and_then(|a| self.meta.get_mut(&a)) {
            Some(meta) => {
                meta.sealed = true;
                meta.height
            }
            None => 0,
        }
    }

    fn register(&mut self, container: Value, children: &[&Value]) -> Result<Value, PickleError> {
        let mut height = 1;
        for child in children {
            height = height.max(1 + self.seal(child));
        }
        if height > MAX_DEPTH {
            return Err(self.malformed(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        let addr = address(&container).expect("a container");
        self.meta.insert(
            addr,
            Meta {
                height,
                sealed: false,
            },
        );
        self.keepalive.push(container.clone());
        Ok(container)
    }

    fn new_tuple(&mut self, items: Vec<Value>) -> Result<Value, PickleError> {
        let tuple = Rc::new(items);
        let refs: Vec<&Value> = tuple.iter().collect();
        self.register(Value::Tuple(tuple.clone()), &refs)
    }

    fn new_list(&mut self, items: Vec<Value>) -> Result<Value, PickleError> {
        let list = Rc::new(RefCell::new(items));
        let items = list.borrow();
        let refs: Vec<&Value> = items.iter().collect();
        self.register(Value::List(list.clone()), &refs)
    }

    fn new_dict(&mut self, pairs: Vec<(Value, Value)>) -> Result<Value, PickleError> {
        let dict = Rc::new(RefCell::new(pairs));
        let pairs = dict.borrow();
        let refs: Vec<&Value> = pairs.iter().flat_map(|(k, v)| [k, v]).collect();
        self.register(Value::Dict(dict.clone()), &refs)
    }

    /// Checks that `target` may still change and takes `children` into it.
    fn insert(&mut self, target: &Value, children: &[&Value]) -> Result<(), PickleError> {
        let addr = address(target).expect("a container");
        let sealed = |m: &Self| m.meta.get(&addr).is_some_and(|meta| meta.sealed);
        if sealed(self) {
            return Err(self.malformed("changes a container that is already inside another one"));
        }
        let mut height = self.meta.get(&addr).map_or(1, |m| m.height);
        for child in children {
            height = height.max(1 + self.seal(child));
        }
        if sealed(self) {
            return Err(self.malformed("puts a container inside itself"));
        }
        if height > MAX_DEPTH {
            return Err(self.malformed(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        if let Some(meta) = self.meta.get_mut(&addr) {
            meta.height = height;
        }
        Ok(())
    }

    fn global(&self, module: String, name: String) -> Result<Value, PickleError> {
        if allow_list::lookup(&module, &name).is_some() {
            Ok(Value::Global(module, name))
        } else {
            Err(PickleError::RefusedGlobal {
                path: self.path.to_path_buf(),
                module: clip(&module),
                name: clip(&name),
            })
        }
    }

    /// Calls (or instantiates) an allowed global with `args`; anything else is refused.
    fn call(&mut self, callable: Value, args: &[Value]) -> Result<Value, PickleError> {
        let Value::Global(module, name) = callable else {
            return Err(self.refused(format!(
                "calling a {} (only allow-listed functions may be called; a nested REDUCE?)",
                callable.type_name()
            )));
        };
        let allowed = allow_list::lookup(&module, &name).expect("only allowed globals load");
        let malformed = |m: &Self, e: String| m.malformed(e);
        match allowed {
            Allowed::RebuildTensor => allow_list::rebuild_tensor(args)
                .map(Value::Tensor)
                .map_err(|e| malformed(self, e)),
            Allowed::RebuildParameter => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.malformed("bad _rebuild_parameter arguments")),
            },
            Allowed::OrderedDict => {
                let pairs = match args {
                    [] => Vec::new(),
                    [Value::Dict(d)] => d.borrow().clone(),
                    [Value::List(l)] => self.pairs(&l.borrow())?,
                    [Value::Tuple(t)] => self.pairs(t)?,
                    _ => return Err(self.malformed("bad OrderedDict arguments")),
                };
                self.new_dict(pairs)
            }
            Allowed::Set => {
                let items = match args {
                    [] => Vec::new(),
                    [Value::List(l)] => l.borrow().clone(),
                    [Value::Tuple(t)] => t.to_vec(),
                    _ => return Err(self.malformed("bad set arguments")),
                };
                self.new_list(items)
            }
            Allowed::Size => {
                let dims = allow_list::size(args).map_err(|e| malformed(self, e))?;
                self.new_tuple(dims)
            }
            Allowed::NumpyScalar => allow_list::numpy_scalar(args).map_err(|e| malformed(self, e)),
            Allowed::NumpyDtype => allow_list::numpy_dtype(args)
                .map(|d| Value::NumpyDtype(Rc::new(RefCell::new(d))))
                .map_err(|e| malformed(self, e)),
            Allowed::CodecsEncode => {
                allow_list::codecs_encode(args).map_err(|e| malformed(self, e))
            }
            // An instance of an allowed class is its state alone; constructor arguments are
            // not kept (these classes are restored by `BUILD`).
            Allowed::Class => {
                let object = Value::Object(
                    format!("{module}.{name}"),
                    Rc::new(RefCell::new(Value::None)),
                );
                self.register(object, &[])
            }
            Allowed::Inert => Err(self.refused(format!(
                "calling `{}.{}`, which a checkpoint may only reference",
                clip(&module),
                clip(&name)
            ))),
        }
    }

    fn pairs(&self, items: &[Value]) -> Result<Vec<(Value, Value)>, PickleError> {
        items
            .iter()
            .map(|item| match item {
                Value::Tuple(pair) if pair.len() == 2 => Ok((pair[0].clone(), pair[1].clone())),
                _ => Err(self.malformed("OrderedDict item is not a pair")),
            })
            .collect()
    }

    fn persistent_load(&mut self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(pid) = pid else {
            return Err(self.malformed("persistent id is not a tuple"));
        };
        match pid.as_slice() {
            [Value::Str(tag), Value::Global(module, class), Value::Str(key), _location, Value::Int(numel), rest @ ..]
                if tag == "storage" && module == "torch" =>
            {
                let kind = allow_list::storage_kind(class)
                    .ok_or_else(|| self.malformed(format!("unknown storage type {class}")))?;
                if !matches!(rest, [] | [Value::None]) {
                    return Err(self.refused(
                        "a storage view (written by torch before 0.4), which is not supported",
                    ));
                }
                if *numel < 0 {
                    return Err(self.malformed("negative storage size"));
                }
                let decl = StorageDecl {
                    kind,
                    numel: *numel,
                };
                match self.storages.get(key.as_str()) {
                    Some(seen) if seen.kind != kind => {
                        return Err(self.malformed(format!("storage {key} has two dtypes")))
                    }
                    Some(_) => {}
                    None => {
                        self.storages.insert(key.clone(), decl);
                    }
                }
                Ok(Value::Storage(kind, key.clone()))
            }
            [Value::Str(tag), ..] if tag == "module" => {
                Err(self.refused("a pickled nn.Module with its source code"))
            }
            _ => Err(self.malformed("unsupported persistent id")),
        }
    }

    fn build(&mut self, state: Value) -> Result<(), PickleError> {
        let target = self.top()?;
        match &target {
            Value::Object(_, cell) => {
                self.insert(&target, &[&state])?;
                *cell.borrow_mut() = state;
                Ok(())
            }
            Value::NumpyDtype(dtype) => {
                allow_list::numpy_dtype_state(&mut dtype.borrow_mut(), &state)
                    .map_err(|e| self.malformed(e))
            }
            // An OrderedDict's or a Parameter's extra state carries nothing a state dict uses.
            Value::Dict(_) | Value::Tensor(_) => Ok(()),
            other => Err(self.refused(format!(
                "BUILD (setting the state) of a {}",
                other.type_name()
            ))),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if items.len() % 2 != 0 {
            return Err(self.malformed("odd number of SETITEMS values"));
        }
        let target = self.top()?;
        let Value::Dict(dict) = &target else {
            return Err(self.malformed(format!("SETITEM on a {}", target.type_name())));
        };
        let refs: Vec<&Value> = items.iter().collect();
        self.insert(&target, &refs)?;
        let mut dict = dict.borrow_mut();
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            dict.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let target = self.top()?;
        let Value::List(list) = &target else {
            return Err(self.malformed(format!("APPEND on a {}", target.type_name())));
        };
        let refs: Vec<&Value> = items.iter().collect();
        self.insert(&target, &refs)?;
        list.borrow_mut().extend(items);
        Ok(())
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PickleError> {
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.malformed(format!("unknown memo entry {index}")))?;
        self.charge(&v)?;
        self.stack.push(v);
        Ok(())
    }

    fn int_bytes(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        if n > 8 {
            return Ok(Value::BigInt(bytes.to_vec()));
        }
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
        buf[..n].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    fn text_line(&mut self, parse: fn(&str) -> Result<Value, String>) -> Result<(), PickleError> {
        let line = self.line()?;
        let v = parse(&line).map_err(|e| self.malformed(e))?;
        self.stack.push(v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    let protocol = self.take(1)?[0];
                    if protocol > 5 {
                        return Err(self.malformed(format!("unknown pickle protocol {protocol}")));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => drop(self.pop()?),
                b'1' => drop(self.pop_mark()?),
                b'2' => {
                    let top = self.top()?;
                    self.charge(&top)?;
                    self.stack.push(top);
                }
                // Numbers.
                b'I' => self.text_line(text::int)?,
                b'L' => self.text_line(text::long)?,
                b'F' => self.text_line(text::float)?,
                b'J' => {
                    let n = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(n.into()));
                }
                b'K' => {
                    let n = self.take(1)?[0];
                    self.stack.push(Value::Int(n.into()));
                }
                b'M' => {
                    let n = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(n.into()));
                }
                0x8a => {
                    let n = self.take(1)?[0] as usize;
                    let v = self.int_bytes(n)?;
                    self.stack.push(v);
                }
                0x8b => {
                    let n = self.len_u32()?;
                    let v = self.int_bytes(n)?;
                    self.stack.push(v);
                }
                b'G' => {
                    let x = f64::from_be_bytes(self.array()?);
                    self.stack.push(Value::Float(x));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                // Strings and bytes.
                b'S' => self.text_line(text::quoted_string)?,
                b'V' => self.text_line(text::raw_unicode)?,
                b'X' => {
                    let n = self.len_u32()?;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.take(1)?[0] as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'U' => {
                    let n = self.take(1)?[0] as usize;
                    let v = self.py2_str(n)?;
                    self.stack.push(v);
                }
                b'T' => {
                    let n = self.len_u32()?;
                    let v = self.py2_str(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.take(1)?[0] as usize;
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.stack.push(v);
                }
                b'B' => {
                    let n = self.len_u32()?;
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.stack.push(v);
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    let v = Value::Bytes(self.take(n)?.to_vec());
                    self.stack.push(v);
                }
                // Containers.
                b')' => {
                    let v = self.new_tuple(Vec::new())?;
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_tuple(items)?;
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.new_tuple(items)?;
                    self.stack.push(v);
                }
                b']' | 0x8f => {
                    let v = self.new_list(Vec::new())?;
                    self.stack.push(v);
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_list(items)?;
                    self.stack.push(v);
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => {
                    let v = self.new_dict(Vec::new())?;
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.new_dict(Vec::new())?;
                    self.stack.push(v);
                    self.set_items(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                // Memo.
                b'p' => {
                    let index = self.line()?;
                    let index = index
                        .trim()
                        .parse()
                        .map_err(|_| self.malformed("bad PUT index"))?;
                    self.memo_put(index)?;
                }
                b'q' => {
                    let index = self.take(1)?[0];
                    self.memo_put(index.into())?;
                }
                b'r' => {
                    let index = u32::from_le_bytes(self.array()?);
                    self.memo_put(index.into())?;
                }
                0x94 => self.memo_put(self.memo.len() as u64)?,
                b'g' => {
                    let index = self.line()?;
                    let index = index
                        .trim()
                        .parse()
                        .map_err(|_| self.malformed("bad GET index"))?;
                    self.memo_get(index)?;
                }
                b'h' => {
                    let index = self.take(1)?[0];
                    self.memo_get(index.into())?;
                }
                b'j' => {
                    let index = u32::from_le_bytes(self.array()?);
                    self.memo_get(index.into())?;
                }
                // Globals, calls and objects: only the allow-list.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(module, name)?;
                    self.stack.push(v);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed("STACK_GLOBAL of non-strings"));
                    };
                    let v = self.global(module, name)?;
                    self.stack.push(v);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Value::Tuple(args) = args else {
                        return Err(self.malformed("call arguments are not a tuple"));
                    };
                    let v = self.call(callable, &args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let (Value::Tuple(args), Value::Dict(kwargs)) = (args, kwargs) else {
                        return Err(self.malformed("bad NEWOBJ_EX arguments"));
                    };
                    if !kwargs.borrow().is_empty() {
                        return Err(self.refused("NEWOBJ_EX with keyword arguments"));
                    }
                    let v = self.call(class, &args)?;
                    self.stack.push(v);
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let class = self.global(module, name)?;
                    let args = self.pop_mark()?;
                    let v = self.call(class, &args)?;
                    self.stack.push(v);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let class = items.remove(0);
                    let v = self.call(class, &items)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    self.build(state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'P' => return Err(self.refused("a text persistent id (PERSID)")),
                0x82..=0x84 => {
                    return Err(self.refused("a global from the copyreg extension registry (EXT)"))
                }
                0x97 | 0x98 => return Err(self.refused("an out-of-band buffer")),
                other => return Err(self.malformed(format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }
}

/// A tensor's storage range, checked: the elements `[first, end)` of its storage that the view
/// `t` reads, or why the view does not fit in `numel` elements.
pub(super) fn view_span(t: &TensorRef, numel: i64) -> Result<(i64, i64), String> {
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
