//! The pickle virtual machine, restricted: it runs every opcode of protocols 0 to 5, but
//! looks up only allow-listed globals ([`super::allow_list`]) and calls them as inert
//! rebuilders, so no byte of a pickle can run code.
//!
//! It also bounds what a hostile stream could make it allocate or recurse into: containers
//! nest at most [`MAX_DEPTH`] deep (values are dropped recursively), a container stops
//! changing once it is inside another one (so nesting stays bounded and cycles cannot form),
//! copies of strings are budgeted, and the stack, marks, memo, container count and the items
//! held by all containers together are capped.

use super::allow_list::{self, Allowed, Dialect};
use super::value::Value;
use super::PickleError;

mod opcodes;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use tch::Kind;

/// The deepest nesting of containers a pickle may build (a state dict needs three or four).
pub const MAX_DEPTH: u32 = 200;

/// The bytes of strings, names and tensor descriptions one pickle may copy (a state dict's
/// pickle copies a few megabytes at most; a hostile one could copy one string endlessly).
const COPY_BUDGET: usize = 256 << 20;

/// Bounds on what one pickle may hold at once, far above any checkpoint (a state dict of a few
/// thousand tensors makes tens of thousands of each) and far below what would exhaust memory:
/// one byte of opcode can make one value, and a legacy file's pickle may be gigabytes long.
const MAX_CONTAINERS: usize = 1 << 20;
const MAX_MEMO: usize = 4 << 20;
pub(super) const MAX_STACK: usize = 1 << 20;

/// The items all containers of one pickle may hold together, counting every copy: a state
/// dict's pickle holds a few dozen per tensor, while without a cap a few bytes of opcodes
/// could copy a memoised million-item dict again and again (all containers stay alive until
/// the pickle ends), or two-byte `APPENDS` items could make a list tens of times the file's size.
const MAX_ITEMS: usize = 4 << 20;

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

/// Unpickles the one pickle starting at `start` in `data`, accepting what `dialect` allows.
pub(super) fn unpickle(
    path: &Path,
    data: &[u8],
    start: usize,
    dialect: Dialect,
) -> Result<Unpickled, PickleError> {
    let mut machine = Machine {
        path,
        dialect,
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        meta: HashMap::new(),
        keepalive: Vec::new(),
        items: 0,
        copy_budget: COPY_BUDGET,
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
    dialect: Dialect,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Height and sealed flag of every container, by its address.
    meta: HashMap<usize, Meta>,
    /// Every container made, so that no address is reused while `meta` describes it.
    keepalive: Vec<Value>,
    /// Items put into containers so far (see [`MAX_ITEMS`]).
    items: usize,
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

    /// A copy of the top of the stack (charged: see [`Self::charge`]).
    fn top(&mut self) -> Result<Value, PickleError> {
        let top = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.malformed("empty stack"))?;
        self.charge(&top)?;
        Ok(top)
    }

    /// Charges a copy of a value against the budget. Containers are shared, so only what a
    /// clone duplicates counts: strings, bytes, names and tensor descriptions. Without it a few
    /// bytes of `GET`s or calls could copy one large string until memory or time runs out.
    fn charge(&mut self, v: &Value) -> Result<(), PickleError> {
        let n = match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) | Value::BigInt(b) => b.len(),
            Value::Global(module, name) => module.len() + name.len(),
            Value::Storage(_, key) => key.len(),
            Value::Tensor(t) => t.key.len() + 16 * t.size.len(),
            _ => 0,
        };
        self.copy_budget = self
            .copy_budget
            .checked_sub(n)
            .ok_or_else(|| self.malformed("too many copies of memoised strings"))?;
        Ok(())
    }

    /// Charges copies of `items` (the contents a call copies into a new container).
    fn charge_all(&mut self, items: &[Value]) -> Result<(), PickleError> {
        items.iter().try_for_each(|v| self.charge(v))
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

    /// Counts `n` more items held by containers.
    fn hold(&mut self, n: usize) -> Result<(), PickleError> {
        self.items = self.items.saturating_add(n);
        if self.items > MAX_ITEMS {
            return Err(self.malformed(format!("more than {MAX_ITEMS} items in containers")));
        }
        Ok(())
    }

    fn register(&mut self, container: Value, children: &[&Value]) -> Result<Value, PickleError> {
        self.hold(children.len())?;
        let mut height = 1;
        for child in children {
            height = height.max(1 + self.seal(child));
        }
        if height > MAX_DEPTH {
            return Err(self.malformed(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        if self.keepalive.len() >= MAX_CONTAINERS {
            return Err(self.malformed(format!("more than {MAX_CONTAINERS} containers")));
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
        self.hold(children.len())?;
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
        if allow_list::lookup(&module, &name, self.dialect).is_some() {
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
        let allowed =
            allow_list::lookup(&module, &name, self.dialect).expect("only allowed globals load");
        let malformed = |m: &Self, e: String| m.malformed(e);
        match allowed {
            Allowed::RebuildTensor => {
                let tensor = allow_list::rebuild_tensor(args)
                    .map(Value::Tensor)
                    .map_err(|e| malformed(self, e))?;
                self.charge(&tensor)?;
                Ok(tensor)
            }
            Allowed::RebuildParameter => match args.first() {
                Some(t @ Value::Tensor(_)) => {
                    self.charge(t)?;
                    Ok(t.clone())
                }
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
                for (k, v) in &pairs {
                    self.charge(k)?;
                    self.charge(v)?;
                }
                self.new_dict(pairs)
            }
            Allowed::Set => {
                let items = match args {
                    [] => Vec::new(),
                    [Value::List(l)] => l.borrow().clone(),
                    [Value::Tuple(t)] => t.to_vec(),
                    _ => return Err(self.malformed("bad set arguments")),
                };
                self.charge_all(&items)?;
                self.new_list(items)
            }
            Allowed::Size => {
                let dims = allow_list::size(args).map_err(|e| malformed(self, e))?;
                self.charge_all(&dims)?;
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
                let class = match name.as_str() {
                    "_reconstruct" => "numpy.ndarray".to_string(),
                    _ => format!("{module}.{name}"),
                };
                let object = Value::Object(class, Rc::new(RefCell::new(Value::None)));
                self.register(object, &[])
            }
            // A TorchScript module object: its attributes come from `BUILD`; a class called
            // with arguments is not a module, and nothing of its code is ever run.
            Allowed::ScriptObject => {
                if !args.is_empty() {
                    return Err(self.refused(format!(
                        "constructing the TorchScript class `{}.{}` with arguments",
                        clip(&module),
                        clip(&name)
                    )));
                }
                let object = Value::Object(
                    format!("{module}.{name}"),
                    Rc::new(RefCell::new(Value::None)),
                );
                self.register(object, &[])
            }
            Allowed::JitIdentity => match args.first() {
                Some(first) => {
                    self.charge(first)?;
                    Ok(first.clone())
                }
                None => Err(self.malformed(format!(
                    "`torch.jit._pickle.{}` without arguments",
                    clip(&name)
                ))),
            },
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
            Value::Object(class, _)
                if class.starts_with("__torch__.") && !matches!(state, Value::Dict(_)) =>
            {
                Err(self.refused(format!(
                    "BUILD of the TorchScript object `{}` from a {} (module attributes are a dict)",
                    clip(class),
                    state.type_name()
                )))
            }
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
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(self.malformed(format!("more than {MAX_MEMO} memo entries")));
        }
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
}
