//! The opcode dispatch of the restricted machine: every opcode of pickle protocols 0 to 5,
//! each mapped onto the machine's checked operations.

use super::Machine;
use crate::pickle::text;
use crate::pickle::value::Value;
use crate::pickle::PickleError;

impl Machine<'_> {
    /// Runs opcodes up to `STOP` and returns the object on top of the stack.
    pub(super) fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            if self.stack.len() > super::MAX_STACK {
                return Err(self.malformed(format!(
                    "more than {} values on the stack",
                    super::MAX_STACK
                )));
            }
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
                b'(' => {
                    // Marks are a stack of their own: one byte each, so cap them as well.
                    if self.marks.len() >= super::MAX_STACK {
                        return Err(self.malformed(format!("more than {} marks", super::MAX_STACK)));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => drop(self.pop()?),
                b'1' => drop(self.pop_mark()?),
                b'2' => {
                    let top = self.top()?;
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
