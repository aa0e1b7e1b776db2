//! Reading PyTorch checkpoints (`torch.save` of a state dict: a zip archive holding
//! `data.pkl` and one file per storage) without Python and without executing anything.
//!
//! The pickle is interpreted by a small stack machine that knows only the opcodes `torch.save`
//! emits and only these globals: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the `torch.*Storage` types. Anything else is an error
//! naming the opcode or global — nothing is ever called.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Element types of storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => StorageType::F32,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "DoubleStorage" => StorageType::F64,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ByteStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 => 2,
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::U8 | StorageType::Bool => 1,
        }
    }
}

/// Where a tensor's elements are: storage `key` (a file in the archive), element offset, shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: StorageType,
    pub offset: usize,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String, String),
    Storage { dtype: StorageType, key: String },
    Tensor(TensorRef),
    Mark,
}

fn err(msg: impl Into<String>) -> Error {
    Error::weights(format!("checkpoint pickle: {}", msg.into()))
}

const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 22;
const MAX_LEN: usize = 1 << 26;

struct Machine<'a> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    memo: BTreeMap<u32, V>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| err("truncated"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| err("truncated global name"))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| err("global name is not UTF-8"))?
            .to_string();
        self.pos += n + 1;
        Ok(s)
    }
    fn push(&mut self, v: V) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(err("stack too deep"));
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> Result<V> {
        self.stack.pop().ok_or_else(|| err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<V>> {
        let i = self
            .stack
            .iter()
            .rposition(|v| *v == V::Mark)
            .ok_or_else(|| err("no MARK on the stack"))?;
        let items = self.stack.split_off(i + 1);
        self.stack.pop();
        Ok(items)
    }
    fn string(&mut self, n: usize) -> Result<String> {
        if n > MAX_LEN {
            return Err(err("string too long"));
        }
        let s = self.take(n)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
    fn memo_put(&mut self, k: u32) -> Result<()> {
        if self.memo.len() >= MAX_MEMO {
            return Err(err("memo too large"));
        }
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| err("memo put on an empty stack"))?;
        self.memo.insert(k, v);
        Ok(())
    }
    fn memo_get(&mut self, k: u32) -> Result<()> {
        let v = self
            .memo
            .get(&k)
            .cloned()
            .ok_or_else(|| err(format!("memo key {k} not set")))?;
        self.push(v)
    }

    fn reduce(&mut self, f: V, args: V) -> Result<V> {
        let V::Global(module, name) = &f else {
            return Err(err("REDUCE of something that is not a global"));
        };
        let V::Tuple(args) = args else {
            return Err(err("REDUCE arguments are not a tuple"));
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Ok(V::Dict(Vec::new())),
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let (
                    Some(V::Storage { dtype, key }),
                    Some(V::Int(offset)),
                    Some(V::Tuple(size)),
                    Some(V::Tuple(stride)),
                ) = (args.first(), args.get(1), args.get(2), args.get(3))
                else {
                    return Err(err("unexpected arguments to _rebuild_tensor_v2"));
                };
                let dims = |t: &[V]| -> Result<Vec<usize>> {
                    t.iter()
                        .map(|v| match v {
                            V::Int(i) if *i >= 0 => Ok(*i as usize),
                            _ => Err(err("tensor size/stride is not a non-negative integer")),
                        })
                        .collect()
                };
                let shape = dims(size)?;
                let stride = dims(stride)?;
                let mut expect = 1usize;
                for (d, s) in shape.iter().zip(&stride).rev() {
                    if *d > 1 && *s != expect {
                        return Err(err(format!(
                            "non-contiguous tensor (shape {shape:?}, stride {stride:?})"
                        )));
                    }
                    expect = expect.saturating_mul(*d);
                }
                if *offset < 0 {
                    return Err(err("negative storage offset"));
                }
                Ok(V::Tensor(TensorRef {
                    storage: key.clone(),
                    dtype: *dtype,
                    offset: *offset as usize,
                    shape,
                }))
            }
            ("torch._utils", "_rebuild_parameter") => match args.into_iter().next() {
                Some(t @ V::Tensor(_)) => Ok(t),
                _ => Err(err("unexpected arguments to _rebuild_parameter")),
            },
            _ => Err(err(format!(
                "unsupported global {module}.{name} (refusing to load)"
            ))),
        }
    }

    fn run(&mut self) -> Result<V> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'}' => self.push(V::Dict(Vec::new()))?,
                b']' => self.push(V::List(Vec::new()))?,
                b')' => self.push(V::Tuple(Vec::new()))?,
                b'(' => self.push(V::Mark)?,
                b'N' => self.push(V::None)?,
                0x88 => self.push(V::Bool(true))?,
                0x89 => self.push(V::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(V::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(V::Int(v as i64))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
                    self.push(V::Int(v as i64))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(err("LONG1 integer wider than 64 bits"));
                    }
                    let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                        [0xFFu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(bytes);
                    self.push(V::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(V::Float(v))?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(V::Str(s))?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(V::Str(s))?
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(V::Str(s))?
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(V::Str(s))?
                }
                b'B' | b'C' => {
                    let n = if op == b'B' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    if n > MAX_LEN {
                        return Err(err("bytes too long"));
                    }
                    let v = self.take(n)?.to_vec();
                    self.push(V::Bytes(v))?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = if module == "torch" {
                        match StorageType::from_name(&name) {
                            Some(_) => V::Global(module, name),
                            None => {
                                return Err(err(format!(
                                    "unsupported global torch.{name} (refusing to load)"
                                )));
                            }
                        }
                    } else if matches!(
                        (module.as_str(), name.as_str()),
                        ("collections", "OrderedDict")
                            | ("torch._utils", "_rebuild_tensor_v2")
                            | ("torch._utils", "_rebuild_tensor")
                            | ("torch._utils", "_rebuild_parameter")
                    ) {
                        V::Global(module, name)
                    } else {
                        return Err(err(format!(
                            "unsupported global {module}.{name} (refusing to load)"
                        )));
                    };
                    self.push(v)?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(V::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.contains(&V::Mark) {
                        return Err(err("MARK inside a tuple"));
                    }
                    self.push(V::Tuple(items))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(V::List(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(err("odd number of items for a dict"));
                    }
                    let mut it = items.into_iter();
                    let mut d = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                    self.push(V::Dict(d))?
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.stack.last_mut() {
                        Some(V::List(l)) => l.push(v),
                        _ => return Err(err("APPEND to something that is not a list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.stack.last_mut() {
                        Some(V::List(l)) => l.extend(items),
                        _ => return Err(err("APPENDS to something that is not a list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.stack.last_mut() {
                        Some(V::Dict(d)) => d.push((k, v)),
                        _ => return Err(err("SETITEM on something that is not a dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(err("odd number of items for SETITEMS"));
                    }
                    match self.stack.last_mut() {
                        Some(V::Dict(d)) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.push((k, v));
                            }
                        }
                        _ => return Err(err("SETITEMS on something that is not a dict")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let V::Tuple(t) = pid else {
                        return Err(err("persistent id is not a tuple"));
                    };
                    match (t.first(), t.get(1), t.get(2)) {
                        (Some(V::Str(tag)), Some(V::Global(m, n)), Some(V::Str(key)))
                            if tag == "storage" && m == "torch" =>
                        {
                            let dtype = StorageType::from_name(n)
                                .ok_or_else(|| err(format!("unsupported storage type {n}")))?;
                            self.push(V::Storage {
                                dtype,
                                key: key.clone(),
                            })?
                        }
                        _ => return Err(err("unsupported persistent id")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: set state on the object below; a state dict's `_metadata` is not
                    // needed, so the state is dropped.
                    self.pop()?;
                    if self.stack.is_empty() {
                        return Err(err("BUILD on an empty stack"));
                    }
                }
                b'.' => return self.pop(),
                other => {
                    return Err(err(format!(
                        "unsupported opcode 0x{other:02x} at byte {at} (refusing to load)"
                    )));
                }
            }
        }
    }
}

/// Interpret a state-dict pickle: tensor name -> where its data is.
pub fn parse_state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorRef)>> {
    let mut m = Machine {
        b: pickle,
        pos: 0,
        stack: Vec::new(),
        memo: BTreeMap::new(),
    };
    let root = m.run()?;
    let V::Dict(items) = root else {
        return Err(err("the checkpoint is not a dict of tensors"));
    };
    // A checkpoint may wrap the state dict, e.g. {"state_dict": {...}}; unwrap one level.
    if items.len() == 1
        && let (V::Str(_), V::Dict(inner)) = &items[0]
        && inner.iter().any(|(_, v)| matches!(v, V::Tensor(_)))
    {
        return collect(inner.clone());
    }
    collect(items)
}

fn collect(items: Vec<(V, V)>) -> Result<Vec<(String, TensorRef)>> {
    let mut out = Vec::new();
    for (k, v) in items {
        match (k, v) {
            (V::Str(k), V::Tensor(t)) => out.push((k, t)),
            (V::Str(k), _) => return Err(err(format!("entry `{k}` is not a tensor"))),
            _ => return Err(err("a state-dict key is not a string")),
        }
    }
    Ok(out)
}

/// A PyTorch zip checkpoint opened for reading one tensor at a time.
#[cfg(not(target_arch = "wasm32"))]
pub struct TorchCheckpoint {
    archive: std::cell::RefCell<zip::ZipArchive<std::io::BufReader<std::fs::File>>>,
    prefix: String,
    tensors: Vec<(String, TensorRef)>,
    path: String,
}

#[cfg(not(target_arch = "wasm32"))]
impl TorchCheckpoint {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let what = path.display().to_string();
        let f =
            std::fs::File::open(path).map_err(|e| Error::Io(format!("cannot read {what}: {e}")))?;
        let mut archive = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| {
            Error::weights(format!("{what}: not a PyTorch zip checkpoint ({e}); legacy (pre-1.6) checkpoints are not supported"))
        })?;
        let pkl_name = (0..archive.len())
            .filter_map(|i| archive.name_for_index(i).map(str::to_string))
            .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
            .ok_or_else(|| Error::weights(format!("{what}: no data.pkl in the archive")))?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
        let mut pkl = Vec::new();
        archive
            .by_name(&pkl_name)
            .map_err(|e| Error::weights(format!("{what}: {e}")))?
            .take(1 << 30)
            .read_to_end(&mut pkl)
            .map_err(|e| Error::weights(format!("{what}: {e}")))?;
        let tensors = parse_state_dict(&pkl).map_err(|e| match e {
            Error::Weights(m) => Error::Weights(format!("{what}: {m}")),
            o => o,
        })?;
        Ok(Self {
            archive: std::cell::RefCell::new(archive),
            prefix,
            tensors,
            path: what,
        })
    }

    pub fn tensors(&self) -> &[(String, TensorRef)] {
        &self.tensors
    }

    /// Read one tensor's values as f32.
    pub fn read_f32(&self, t: &TensorRef) -> Result<Vec<f32>> {
        use std::io::Read;
        let n: usize = t.shape.iter().product();
        let sz = t.dtype.size();
        let mut archive = self.archive.borrow_mut();
        let name = format!("{}data/{}", self.prefix, t.storage);
        let mut entry = archive
            .by_name(&name)
            .map_err(|e| Error::weights(format!("{}: storage {name}: {e}", self.path)))?;
        let start = t
            .offset
            .checked_mul(sz)
            .ok_or_else(|| err("offset overflow"))?;
        let len = n.checked_mul(sz).ok_or_else(|| err("size overflow"))?;
        if (start + len) as u64 > entry.size() {
            return Err(Error::weights(format!(
                "{}: storage {name} is shorter than its tensor",
                self.path
            )));
        }
        std::io::copy(&mut (&mut entry).take(start as u64), &mut std::io::sink())
            .map_err(|e| Error::Io(e.to_string()))?;
        let mut raw = vec![0u8; len];
        entry
            .read_exact(&mut raw)
            .map_err(|e| Error::Io(format!("{}: {e}", self.path)))?;
        let f = |c: &[u8]| -> f32 {
            match t.dtype {
                StorageType::F32 => f32::from_le_bytes(c.try_into().unwrap()),
                StorageType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                StorageType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                StorageType::F64 => f64::from_le_bytes(c.try_into().unwrap()) as f32,
                StorageType::I64 => i64::from_le_bytes(c.try_into().unwrap()) as f32,
                StorageType::I32 => i32::from_le_bytes(c.try_into().unwrap()) as f32,
                StorageType::U8 | StorageType::Bool => c[0] as f32,
            }
        };
        Ok(raw.chunks_exact(sz).map(f).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_globals_and_opcodes() {
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        let e = parse_state_dict(evil).unwrap_err().to_string();
        assert!(e.contains("unsupported global os.system"), "{e}");
        let e = parse_state_dict(b"\x80\x02\xff.").unwrap_err().to_string();
        assert!(e.contains("unsupported opcode 0xff"), "{e}");
        assert!(parse_state_dict(b"").is_err());
        assert!(parse_state_dict(b"\x80\x02}q\x00(").is_err());
    }
}
