//! The CLIP byte-level BPE tokenizer, plus FastComposer's subject markers.
//!
//! Normalisation follows transformers' `CLIPTokenizer` (the tokenizer Stable Diffusion
//! pipelines use): NFC, runs of whitespace -> one space, per-character lower-casing. Then the
//! CLIP split pattern, the byte-to-unicode map and BPE with the `</w>` end-of-word suffix.
//! `<|startoftext|>` / `<|endoftext|>` written in the text are the special tokens, as there.
//!
//! Markers (`<|image|>` by default) are matched exactly in the raw text, removed, and the token
//! just before each one is flagged as subject k (METHOD.md).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// Sequence length of the CLIP text encoder.
pub const MAX_LENGTH: usize = 77;
/// `<|startoftext|>`.
pub const BOS: u32 = 49406;
/// `<|endoftext|>`, also the padding token in Stable Diffusion.
pub const EOS: u32 = 49407;
/// The default subject marker.
pub const DEFAULT_MARKER: &str = "<|image|>";

/// The CLIP vocabulary file as open_clip ships it (gzip), MIT licence (assets/LICENSE-open_clip).
pub const VOCAB_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");
const NUM_MERGES: usize = 49152 - 256 - 2;

/// A piece of tokenizer output before marker handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Token(u32),
    Marker,
}

/// The result of [`ClipTokenizer::encode_prompt`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EncodedPrompt {
    /// `MAX_LENGTH` ids: BOS, content (markers removed), EOS, padding (EOS).
    pub input_ids: Vec<u32>,
    /// For each marker in order, the position of the token it flags.
    pub subject_positions: Vec<usize>,
    /// Whether content tokens were dropped to fit `MAX_LENGTH`.
    pub truncated: bool,
}

/// CLIP BPE tokenizer.
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), u32>,
    byte_encoder: [char; 256],
    clip_pattern: Regex,
    byte_level_pattern: Regex,
    whitespace: Regex,
    marker: String,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab", &self.encoder.len())
            .field("marker", &self.marker)
            .finish()
    }
}

/// GPT-2's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).unwrap()))
        .collect()
}

impl ClipTokenizer {
    /// The tokenizer with the vocabulary built into the crate and the default marker.
    pub fn new() -> Result<Self> {
        Self::with_marker(DEFAULT_MARKER)
    }

    /// The built-in vocabulary with a custom marker string.
    pub fn with_marker(marker: &str) -> Result<Self> {
        Self::from_gz(VOCAB_GZ, marker)
    }

    /// A vocabulary file in gzip form (as open_clip ships it, and as bundles carry it).
    pub fn from_gz(gz: &[u8], marker: &str) -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .take(64 << 20)
            .read_to_string(&mut text)
            .map_err(|e| Error::weights(format!("tokenizer vocabulary: {e}")))?;
        Self::from_merges_text(&text, marker)
    }

    /// Build from the text of `bpe_simple_vocab_16e6.txt` (header line, then merges).
    pub fn from_merges_text(text: &str, marker: &str) -> Result<Self> {
        if marker.trim().is_empty() {
            return Err(Error::invalid("the subject marker must not be empty"));
        }
        let merges: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .take(NUM_MERGES)
            .map(|l| {
                let mut it = l.split(' ');
                match (it.next(), it.next(), it.next()) {
                    (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                    _ => Err(Error::weights(format!(
                        "tokenizer vocabulary: bad merge line {l:?}"
                    ))),
                }
            })
            .collect::<Result<_>>()?;
        if merges.len() != NUM_MERGES {
            return Err(Error::weights(format!(
                "tokenizer vocabulary: {} merges, expected {NUM_MERGES}",
                merges.len()
            )));
        }
        let b2u = bytes_to_unicode();
        let mut byte_encoder = ['\0'; 256];
        for &(b, c) in &b2u {
            byte_encoder[b as usize] = c;
        }
        let mut vocab: Vec<String> = b2u.iter().map(|(_, c)| c.to_string()).collect();
        vocab.extend(b2u.iter().map(|(_, c)| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let encoder: HashMap<String, u32> = vocab
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i as u32))
            .collect();
        Ok(Self {
            encoder,
            ranks,
            byte_encoder,
            clip_pattern: Regex::new(
                r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            )
            .expect("static pattern"),
            byte_level_pattern: Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+")
                .expect("static pattern"),
            whitespace: Regex::new(r"\s+").expect("static pattern"),
            marker: marker.to_string(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The marker string.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Vocabulary size without the marker (49408).
    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// BPE of one byte-level-encoded word.
    fn bpe(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().ok().and_then(|c| c.get(word).cloned()) {
            return ids;
        }
        let chars: Vec<char> = word.chars().collect();
        let mut parts: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..parts.len().saturating_sub(1) {
                if let Some(&r) = self.ranks.get(&(parts[i].clone(), parts[i + 1].clone()))
                    && best.is_none_or(|(br, _)| r < br)
                {
                    best = Some((r, i));
                }
            }
            let Some((_, i)) = best else { break };
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            // Merge every occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut j = 0;
            while j < parts.len() {
                if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(parts[j].clone());
                    j += 1;
                }
            }
            parts = merged;
        }
        // Every byte and every merge result is in the vocabulary.
        let ids: Vec<u32> = parts
            .iter()
            .filter_map(|p| self.encoder.get(p).copied())
            .collect();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(word.to_string(), ids.clone());
        }
        ids
    }

    /// Tokens of text that holds no special tokens or markers.
    fn encode_plain(&self, text: &str, out: &mut Vec<Piece>) {
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        let lower: String = spaced.chars().flat_map(|c| c.to_lowercase()).collect();
        for m in self.clip_pattern.find_iter(&lower) {
            for piece in self.byte_level_pattern.find_iter(m.as_str()) {
                let encoded: String = piece
                    .as_str()
                    .bytes()
                    .map(|b| self.byte_encoder[b as usize])
                    .collect();
                out.extend(self.bpe(&encoded).into_iter().map(Piece::Token));
            }
        }
    }

    /// Split on the marker and the literal special tokens, tokenize the rest.
    fn pieces(&self, text: &str) -> Vec<Piece> {
        let specials: [(&str, Piece); 3] = [
            (self.marker.as_str(), Piece::Marker),
            ("<|startoftext|>", Piece::Token(BOS)),
            ("<|endoftext|>", Piece::Token(EOS)),
        ];
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            // The earliest special; at equal positions the longest.
            let next = specials
                .iter()
                .filter_map(|(s, p)| rest.find(s).map(|i| (i, s.len(), *p)))
                .min_by_key(|&(i, len, _)| (i, std::cmp::Reverse(len)));
            match next {
                Some((i, len, piece)) => {
                    self.encode_plain(&rest[..i], &mut out);
                    out.push(piece);
                    rest = &rest[i + len..];
                }
                None => {
                    self.encode_plain(rest, &mut out);
                    return out;
                }
            }
        }
    }

    /// Content token ids of `text` (no BOS/EOS, no truncation); markers are an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.pieces(text)
            .into_iter()
            .map(|p| match p {
                Piece::Token(id) => Ok(id),
                Piece::Marker => Err(Error::invalid(format!(
                    "unexpected subject marker `{}` in this text",
                    self.marker
                ))),
            })
            .collect()
    }

    /// The full `MAX_LENGTH` encoding of a prompt with subject markers.
    pub fn encode_prompt(&self, text: &str) -> Result<EncodedPrompt> {
        let mut ids = vec![BOS];
        let mut positions = Vec::new();
        let mut last_was_marker = false;
        for piece in self.pieces(text) {
            match piece {
                Piece::Token(id) => {
                    ids.push(id);
                    last_was_marker = false;
                }
                Piece::Marker => {
                    if ids.len() == 1 {
                        return Err(Error::invalid(format!(
                            "subject marker {} at the start of the prompt: put it right after the subject's class noun, e.g. \"a man {} on the beach\"",
                            positions.len() + 1,
                            self.marker
                        )));
                    }
                    if last_was_marker {
                        return Err(Error::invalid(format!(
                            "subject markers {} and {} follow each other: each marker needs its own noun before it",
                            positions.len(),
                            positions.len() + 1
                        )));
                    }
                    positions.push(ids.len() - 1);
                    last_was_marker = true;
                }
            }
        }
        let truncated = ids.len() > MAX_LENGTH - 1;
        ids.truncate(MAX_LENGTH - 1);
        if let Some(k) = positions.iter().position(|&p| p >= MAX_LENGTH - 1) {
            return Err(Error::invalid(format!(
                "subject marker {} falls after the {}-token limit of the prompt; shorten the prompt or move the subject earlier",
                k + 1,
                MAX_LENGTH
            )));
        }
        ids.push(EOS);
        ids.resize(MAX_LENGTH, EOS);
        Ok(EncodedPrompt {
            input_ids: ids,
            subject_positions: positions,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = ClipTokenizer::new().unwrap();
        assert_eq!(t.vocab_size(), 49408);
        assert_eq!(
            t.encode("a photo of a cat").unwrap(),
            vec![320, 1125, 539, 320, 2368]
        );
    }

    #[test]
    fn marker_flags_previous_token() {
        let t = ClipTokenizer::new().unwrap();
        let e = t
            .encode_prompt("a man <|image|> and a cat <|image|> on the beach")
            .unwrap();
        let plain = t.encode_prompt("a man and a cat on the beach").unwrap();
        assert_eq!(e.input_ids, plain.input_ids);
        assert_eq!(e.subject_positions, vec![2, 5]);
        assert_eq!(e.input_ids.len(), MAX_LENGTH);
    }

    #[test]
    fn marker_errors() {
        let t = ClipTokenizer::new().unwrap();
        assert!(t.encode_prompt("<|image|> a man").is_err());
        assert!(t.encode_prompt("a man <|image|><|image|>").is_err());
        let long = format!("{} a cat <|image|>", "word ".repeat(80));
        assert!(t.encode_prompt(&long).is_err());
        let long_ok = format!("a cat <|image|> {}", "word ".repeat(80));
        let e = t.encode_prompt(&long_ok).unwrap();
        assert!(e.truncated);
        assert_eq!(e.input_ids[76], EOS);
    }

    #[test]
    fn custom_marker() {
        let t = ClipTokenizer::with_marker("img").unwrap();
        let e = t.encode_prompt("a dog img running").unwrap();
        assert_eq!(e.subject_positions, vec![2]);
        assert!(ClipTokenizer::with_marker(" ").is_err());
    }
}
