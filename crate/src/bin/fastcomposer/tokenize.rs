//! Tokenize a prompt with subject markers; prints {"input_ids": [...77], "subject_positions": [...]}.

use super::*;

#[derive(clap::Args)]
pub struct Args {
    pub prompt: String,
    /// The subject marker.
    #[arg(long, default_value = fastcomposer::tokenizer::DEFAULT_MARKER)]
    pub marker: String,
}

pub fn run(args: Args) -> Result<()> {
    let Args { prompt, marker } = args;
    let tok = ClipTokenizer::with_marker(&marker)?;
    let e = tok.encode_prompt(&prompt)?;
    if e.truncated {
        eprintln!("warning: the prompt is longer than 77 tokens and was truncated");
    }
    let json = serde_json::json!({
        "input_ids": e.input_ids,
        "subject_positions": e.subject_positions,
    });
    println!("{json}");
    Ok(())
}
