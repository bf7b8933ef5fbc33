//! Regenerates `spec/vectors/*.json` and the fuzz seed corpus.
//!
//! ```text
//! cargo run --example gen_vectors
//! ```
//!
//! Run from the repository root. Old vector and corpus files are removed
//! first, so the directories hold exactly what the generator produces.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let vectors = Path::new("spec/vectors");
    let corpus = Path::new("fuzz/corpus");
    clear(vectors, "json")?;
    for target in ["envelope", "chain", "proof", "checkpoint", "cli_files"] {
        fs::create_dir_all(corpus.join(target))?;
        clear(&corpus.join(target), "bin")?;
    }
    let all = pulse_ledger::vectors::generate();
    for v in &all {
        let mut text = serde_json::to_string_pretty(&v.json).map_err(std::io::Error::other)?;
        text.push('\n');
        fs::write(vectors.join(&v.file), text)?;
        if let Some((target, bytes)) = &v.corpus {
            let name = v.file.trim_end_matches(".json");
            fs::write(corpus.join(target).join(format!("{name}.bin")), bytes)?;
        }
    }
    let seeds = pulse_ledger::fuzzing::seeds();
    for (target, name, bytes) in &seeds {
        fs::write(corpus.join(target).join(format!("{name}.bin")), bytes)?;
    }
    println!(
        "wrote {} vectors to {} and {} more fuzz seeds",
        all.len(),
        vectors.display(),
        seeds.len()
    );
    Ok(())
}

fn clear(dir: &Path, ext: &str) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == ext) {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}
