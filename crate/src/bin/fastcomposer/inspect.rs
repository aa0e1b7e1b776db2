//! Print a bundle's components, dtypes, sizes and checksum status.

use super::*;

#[derive(clap::Args)]
pub struct Args {
    pub bundle: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let Args { bundle } = args;
    let bytes = read_bytes(&bundle)?;
    let info = BundleInfo::parse(&bytes)?;
    println!("bundle: {}", bundle.display());
    println!("name: {}", info.name);
    println!("quantization: {}", info.quantization);
    println!("license: {}", info.license.lines().next().unwrap_or(""));
    println!(
        "file: {} bytes (header {}, data {})",
        info.file_len(),
        info.header.data_start,
        info.header.data_len
    );
    println!(
        "image size: {} px, marker {:?}",
        info.config.native_size(),
        info.config.marker
    );
    for part in Part::ALL {
        let mut by: std::collections::BTreeMap<&str, (usize, u64, u64)> = Default::default();
        for t in info.part_tensors(part) {
            let e = by.entry(t.ty.name()).or_default();
            e.0 += 1;
            e.1 += t.shape.iter().product::<usize>() as u64;
            e.2 += t.size;
        }
        let desc: Vec<String> = by
            .iter()
            .map(|(ty, (n, p, b))| {
                format!(
                    "{ty}: {n} tensors, {:.2} M params, {:.2} MB",
                    *p as f64 / 1e6,
                    *b as f64 / 1e6
                )
            })
            .collect();
        println!("  {:<13} {}", part.name(), desc.join("; "));
    }
    let mut bad = Vec::new();
    for i in 0..info.n_chunks() {
        let (a, b) = info.chunk_range(i);
        let ok = (b as usize) <= bytes.len()
            && info.verify_chunk(i, &bytes[a as usize..b as usize]).is_ok();
        if !ok {
            bad.push(i);
        }
    }
    if bad.is_empty() {
        println!("checksums: all {} chunks OK", info.n_chunks());
        Ok(())
    } else {
        println!(
            "checksums: {} of {} chunks BAD: {bad:?}",
            bad.len(),
            info.n_chunks()
        );
        Err(Error::weights(format!(
            "{} corrupt chunk(s): {bad:?}",
            bad.len()
        )))
    }
}
