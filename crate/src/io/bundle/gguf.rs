//! The GGUF (version 3) container: reading a header from untrusted bytes with every length
//! and offset checked, and writing one.
//!
//! ```text
//! "GGUF" u32 version=3  u64 n_tensors  u64 n_kv
//! n_kv × (string key, u32 type, value)
//! n_tensors × (string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml_type, u64 offset)
//! padding to `general.alignment`, then the tensor data (each tensor at its aligned offset)
//! ```
//! Strings are a u64 length and UTF-8 bytes; everything is little-endian.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
pub use crate::quant::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Arrays of bytes are kept as bytes (the tokenizer vocabulary).
    Bytes(Vec<u8>),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in the usual (outermost-first) order.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub size: u64,
}

/// A parsed header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: u64,
    /// Length of the data section the tensors need (end of the last tensor).
    pub data_len: u64,
}

const MAX_COUNT: u64 = 1 << 20;
const MAX_STRING: u64 = 64 << 20;
const MAX_ARRAY: u64 = 256 << 20;
const MAX_DIMS: u32 = 4;

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

const TRUNCATED: &str = "bundle header is truncated";

fn truncated(what: &str) -> Error {
    Error::weights(format!("{TRUNCATED} (while reading {what})"))
}

/// Whether `parse_header` failed only because its input ended inside the header (more bytes of
/// the same file may still parse).
pub fn is_truncated(e: &Error) -> bool {
    matches!(e, Error::Weights(m) if m.starts_with(TRUNCATED))
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| truncated(what))?;
        let end = self.pos.checked_add(n).ok_or_else(|| truncated(what))?;
        if end > self.b.len() {
            return Err(truncated(what));
        }
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, w: &str) -> Result<u8> {
        Ok(self.take(1, w)?[0])
    }
    fn u16(&mut self, w: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, w)?.try_into().unwrap()))
    }
    fn u32(&mut self, w: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, w)?.try_into().unwrap()))
    }
    fn u64(&mut self, w: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, w)?.try_into().unwrap()))
    }
    fn string(&mut self, w: &str) -> Result<String> {
        let n = self.u64(w)?;
        if n > MAX_STRING {
            return Err(Error::weights(format!(
                "bundle header: {w} is {n} bytes long, which is implausible"
            )));
        }
        let s = self.take(n, w)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| Error::weights(format!("bundle header: {w} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => Value::Bool(self.u8(key)? != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(Error::weights(format!(
                        "bundle header: `{key}` nests arrays too deeply"
                    )));
                }
                let ety = self.u32(key)?;
                let n = self.u64(key)?;
                if n > MAX_ARRAY {
                    return Err(Error::weights(format!(
                        "bundle header: `{key}` has {n} elements, which is implausible"
                    )));
                }
                if ety == 0 {
                    Value::Bytes(self.take(n, key)?.to_vec())
                } else {
                    // Each element takes at least one byte: a bound before allocating.
                    if n > (self.b.len() - self.pos) as u64 {
                        return Err(truncated(key));
                    }
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(self.value(ety, key, depth + 1)?);
                    }
                    Value::Array(v)
                }
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            other => {
                return Err(Error::weights(format!(
                    "bundle header: `{key}` has unknown value type {other}"
                )));
            }
        })
    }
}

/// Parse a header from the start of a file. `bytes` may be only a prefix of the file; if it is
/// too short the error says the header is truncated.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    let mut c = Cursor { b: bytes, pos: 0 };
    let magic = c.take(4, "the magic number")?;
    if magic != MAGIC {
        return Err(Error::weights(format!(
            "not a model bundle: the file starts with {magic:02x?}, expected \"GGUF\""
        )));
    }
    let version = c.u32("the version")?;
    if version != VERSION {
        return Err(Error::weights(format!(
            "unsupported bundle container version {version} (expected GGUF {VERSION})"
        )));
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
        return Err(Error::weights(format!(
            "bundle header: {n_tensors} tensors / {n_kv} metadata entries is implausible"
        )));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("a metadata key")?;
        let ty = c.u32(&key)?;
        let v = c.value(ty, &key, 0)?;
        metadata.insert(key, v);
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(Error::weights(
                    "bundle header: general.alignment must be a power of two",
                ));
            }
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
    let mut data_len = 0u64;
    for _ in 0..n_tensors {
        let name = c.string("a tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::weights(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} supported)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let code = c.u32(&name)?;
        let ty = GgmlType::from_code(code).ok_or_else(|| {
            Error::weights(format!(
                "tensor `{name}` has unknown dtype {code} (supported: f32, f16, q4_0, q8_0)"
            ))
        })?;
        let offset = c.u64(&name)?;
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0 && n < (1 << 40))
            .ok_or_else(|| {
                Error::weights(format!("tensor `{name}` has an invalid shape {dims:?}"))
            })?;
        let size = ty.byte_size(n).ok_or_else(|| {
            Error::weights(format!(
                "tensor `{name}`: {n} elements is not a whole number of {} blocks",
                ty.name()
            ))
        })?;
        if offset % alignment != 0 {
            return Err(Error::weights(format!(
                "tensor `{name}` is not aligned to {alignment} bytes"
            )));
        }
        let end = offset
            .checked_add(size)
            .ok_or_else(|| Error::weights(format!("tensor `{name}` has an invalid offset")))?;
        data_len = data_len.max(end);
        dims.reverse();
        let shape = dims.into_iter().map(|d| d as usize).collect();
        tensors.push(TensorInfo {
            name,
            shape,
            ty,
            offset,
            size,
        });
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    // Every tensor ends within data_start + data_len; that sum must be a valid file size.
    if data_start
        .checked_add(data_len)
        .is_none_or(|end| end > 1 << 50)
    {
        return Err(Error::weights(
            "bundle header: the tensors extend past any plausible file size",
        ));
    }
    // Tensors must not overlap.
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.size, t.name.as_str()))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(Error::weights(format!(
                "tensors `{}` and `{}` overlap",
                w[0].2, w[1].2
            )));
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
        data_len,
    })
}

/// Writes a GGUF header; the caller writes the data after it.
pub struct HeaderWriter {
    pub bytes: Vec<u8>,
}

impl HeaderWriter {
    pub fn new(n_tensors: u64, n_kv: u64) -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&n_tensors.to_le_bytes());
        bytes.extend_from_slice(&n_kv.to_le_bytes());
        Self { bytes }
    }

    fn string(&mut self, s: &str) {
        self.bytes
            .extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
    }

    pub fn kv_string(&mut self, key: &str, v: &str) {
        self.string(key);
        self.bytes.extend_from_slice(&8u32.to_le_bytes());
        self.string(v);
    }

    pub fn kv_u32(&mut self, key: &str, v: u32) {
        self.string(key);
        self.bytes.extend_from_slice(&4u32.to_le_bytes());
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn kv_u64(&mut self, key: &str, v: u64) {
        self.string(key);
        self.bytes.extend_from_slice(&10u32.to_le_bytes());
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn kv_bytes(&mut self, key: &str, v: &[u8]) {
        self.string(key);
        self.bytes.extend_from_slice(&9u32.to_le_bytes());
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.bytes
            .extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(v);
    }

    /// An array of u64; returns the byte position of its first element (to patch later).
    pub fn kv_u64_array(&mut self, key: &str, v: &[u64]) -> usize {
        self.string(key);
        self.bytes.extend_from_slice(&9u32.to_le_bytes());
        self.bytes.extend_from_slice(&10u32.to_le_bytes());
        self.bytes
            .extend_from_slice(&(v.len() as u64).to_le_bytes());
        let at = self.bytes.len();
        for x in v {
            self.bytes.extend_from_slice(&x.to_le_bytes());
        }
        at
    }

    pub fn tensor(&mut self, name: &str, shape: &[usize], ty: GgmlType, offset: u64) {
        self.string(name);
        self.bytes
            .extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for &d in shape.iter().rev() {
            self.bytes.extend_from_slice(&(d as u64).to_le_bytes());
        }
        self.bytes.extend_from_slice(&ty.code().to_le_bytes());
        self.bytes.extend_from_slice(&offset.to_le_bytes());
    }

    /// Pad to `alignment`; the data section starts right after.
    pub fn finish(mut self, alignment: u64) -> Vec<u8> {
        let n = (self.bytes.len() as u64).div_ceil(alignment) * alignment;
        self.bytes.resize(n as usize, 0);
        self.bytes
    }
}
