//! The tokenizer against transformers' CLIPTokenizer and open_clip on the fixture corpus
//! (tools/reference/tokenizer_corpus.py, >= 200 prompts).

use crate::common::fixtures;
use fastcomposer::tokenizer::{BOS, ClipTokenizer, EOS, MAX_LENGTH};
use serde_json::Value;

fn corpus() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("tokenizer_corpus.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["rows"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `[BOS] + content[..75] + [EOS]`, padded with EOS to 77 (transformers with truncation).
fn padded(tok: &ClipTokenizer, text: &str) -> Vec<u32> {
    let mut content = tok.encode(text).unwrap();
    content.truncate(MAX_LENGTH - 2);
    let mut out = vec![BOS];
    out.extend(content);
    out.push(EOS);
    out.resize(MAX_LENGTH, EOS);
    out
}

#[test]
fn corpus_is_large_enough() {
    assert!(corpus().len() >= 200);
}

#[test]
fn identical_to_transformers_on_the_whole_corpus() {
    let tok = ClipTokenizer::new().unwrap();
    for row in corpus() {
        let plain = row["plain"].as_str().unwrap();
        assert_eq!(
            padded(&tok, plain),
            ids(&row["transformers"]),
            "prompt {plain:?}"
        );
    }
}

#[test]
fn identical_to_open_clip_where_the_references_agree() {
    // open_clip additionally runs ftfy and html.unescape and lower-cases with str.lower();
    // transformers (and Stable Diffusion pipelines) do not. Where the two references give
    // the same content ids, ours must too; the few prompts where they differ are listed.
    let tok = ClipTokenizer::new().unwrap();
    let mut differ = Vec::new();
    let rows = corpus();
    for row in &rows {
        let plain = row["plain"].as_str().unwrap();
        // open_clip pads with 0, transformers with EOS.
        let oc: Vec<u32> = ids(&row["open_clip"])
            .into_iter()
            .map(|x| if x == 0 { EOS } else { x })
            .collect();
        if oc == ids(&row["transformers"]) {
            assert_eq!(padded(&tok, plain), oc, "prompt {plain:?}");
        } else {
            differ.push(plain.to_string());
        }
    }
    println!(
        "references differ on {} of {} prompts: {differ:?}",
        differ.len(),
        rows.len()
    );
    assert!(
        differ.len() <= 10,
        "unexpectedly many disagreements: {differ:?}"
    );
}

#[test]
fn markers_follow_the_method() {
    let tok = ClipTokenizer::new().unwrap();
    let mut n = 0;
    for row in corpus() {
        let Some(m) = row.get("marker") else { continue };
        n += 1;
        let prompt = row["prompt"].as_str().unwrap();
        let got = tok.encode_prompt(prompt);
        if m.get("error").is_some() {
            assert!(
                got.is_err(),
                "prompt {prompt:?} should be refused ({})",
                m["error"]
            );
        } else {
            let got = got.unwrap_or_else(|e| panic!("prompt {prompt:?}: {e}"));
            assert_eq!(got.input_ids, ids(&m["input_ids"]), "prompt {prompt:?}");
            let pos: Vec<usize> = ids(&m["subject_positions"])
                .into_iter()
                .map(|x| x as usize)
                .collect();
            assert_eq!(got.subject_positions, pos, "prompt {prompt:?}");
        }
    }
    assert!(n >= 80, "only {n} marker prompts");
}
