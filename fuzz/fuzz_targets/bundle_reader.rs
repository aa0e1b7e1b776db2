//! The bundle reader on arbitrary bytes: header parsing, chunk verification, tensor decoding.
//! Every input must give Ok or a typed error, never a panic.
#![no_main]
use fastcomposer::io::bundle::{Bundle, BundleInfo, tensor_data};
use fastcomposer::config::TensorSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = BundleInfo::parse(data) {
        for i in 0..info.n_chunks() {
            let (a, b) = info.chunk_range(i);
            if (b as usize) <= data.len() {
                let _ = info.verify_chunk(i, &data[a as usize..b as usize]);
            }
        }
        for t in &info.header.tensors {
            let a = (info.header.data_start + t.offset) as usize;
            if let Some(bytes) = data.get(a..a + t.size as usize) {
                let _ = tensor_data(t, bytes);
            }
        }
    }
    if let Ok(b) = Bundle::from_bytes(data.to_vec()) {
        for name in b.names() {
            let _ = b.read(&name);
        }
    }
});
