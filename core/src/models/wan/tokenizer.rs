//! The text tokenizer: a `tokenizer.json` read by the `tokenizers` crate (UMT5's Unigram model, or the WordLevel
//! model of small vgen models), padded and truncated to a fixed length with an attention mask, as transformers
//! does for WanPipeline. Prompts are first cleaned as WanPipeline's `prompt_clean` does.

use crate::error::{Error, ErrorCode, Result};
use std::path::Path;
use tch::{Kind, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub struct WanTokenizer {
    inner: Tokenizer,
    max_len: usize,
    unk_id: Option<u32>,
}

impl WanTokenizer {
    /// Loads `folder/tokenizer.json` to give sequences of exactly `max_len` tokens.
    pub fn from_folder(folder: &Path, max_len: usize) -> Result<Self> {
        let path = folder.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::new(ErrorCode::NotFound, format!("{} is missing", path.display())));
        }
        // The `tokenizers` crate panics on some malformed files instead of returning an error (found by fuzzing:
        // a bad `decoder` section). A model folder is untrusted input and opening one runs on the host's thread, so
        // a panic here would take the host down: it becomes an error naming the file.
        let loaded = std::panic::catch_unwind(|| Tokenizer::from_file(&path)).map_err(|_| {
            Error::invalid(format!("{} is malformed (the tokenizer library could not read it)", path.display()))
        })?;
        let mut inner = loaded.map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let pad_id = inner.token_to_id("<pad>").unwrap_or(0);
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            pad_id,
            pad_token: "<pad>".into(),
            ..Default::default()
        }));
        inner
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let unk_id = inner.token_to_id("<unk>");
        Ok(Self { inner, max_len, unk_id })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids and attention masks `[B, max_len]` (int64) for already-cleaned prompts.
    pub fn encode(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let mut ids = Vec::with_capacity(prompts.len() * self.max_len);
        let mut mask = Vec::with_capacity(prompts.len() * self.max_len);
        for p in prompts {
            let enc = self.inner.encode(*p, true).map_err(|e| Error::invalid(format!("cannot tokenize {p:?}: {e}")))?;
            ids.extend(enc.get_ids().iter().map(|i| *i as i64));
            mask.extend(enc.get_attention_mask().iter().map(|m| *m as i64));
        }
        let shape = [prompts.len() as i64, self.max_len as i64];
        Ok((Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape).to_kind(Kind::Int64)))
    }

    /// The byte spans of `prompt` that the vocabulary does not know (they would become `<unk>`).
    fn unknown_spans(&self, prompt: &str) -> Vec<(usize, usize)> {
        let (Some(unk), Ok(enc)) = (self.unk_id, self.inner.encode(prompt, false)) else { return Vec::new() };
        enc.get_ids().iter().zip(enc.get_offsets()).filter(|(id, _)| **id == unk).map(|(_, span)| *span).collect()
    }

    /// The words of a prompt that the vocabulary does not know (they become `<unk>` and carry no meaning).
    pub fn unknown_words(&self, prompt: &str) -> Vec<String> {
        let mut words: Vec<String> =
            self.unknown_spans(prompt).into_iter().filter_map(|(a, b)| prompt.get(a..b).map(str::to_string)).collect();
        words.dedup();
        words
    }

    /// `prompt` without the words the vocabulary does not know, so that they are ignored rather than encoded as
    /// `<unk>`: a small model never trained on `<unk>` (shapes-tiny) can be thrown off by it entirely.
    pub fn without_unknown_words(&self, prompt: &str) -> String {
        let unknown = self.unknown_spans(prompt);
        if unknown.is_empty() {
            return prompt.to_string(); // untouched, byte for byte, as the reference pipeline encodes it
        }
        let mut kept = String::with_capacity(prompt.len());
        let mut from = 0;
        for (start, end) in unknown {
            kept.push_str(prompt.get(from..start).unwrap_or(""));
            from = end;
        }
        kept.push_str(prompt.get(from..).unwrap_or(""));
        kept.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// WanPipeline's `prompt_clean`: HTML entities unescaped (twice), whitespace runs collapsed to one space, trimmed.
/// `ftfy` is not applied (diffusers applies it only when installed). Named entities beyond the XML ones and
/// HTML 4's Latin-1 set are left as they are.
pub fn prompt_clean(text: &str) -> String {
    let once = html_unescape(&html_unescape(text));
    let trimmed = once.trim_matches(is_python_space);
    let mut out = String::with_capacity(trimmed.len());
    let mut in_space = false;
    for ch in trimmed.chars() {
        if is_unicode_white_space(ch) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(ch);
            in_space = false;
        }
    }
    out.trim_matches(is_python_space).to_string()
}

/// Python's `str.isspace` (what `str.strip()` removes): Unicode white space plus the separators U+001C–U+001F.
fn is_python_space(c: char) -> bool {
    is_unicode_white_space(c) || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The Unicode White_Space property (the `regex` module's `\s`).
fn is_unicode_white_space(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{d}' | ' ' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// HTML 4's Latin-1 entities, which name U+00A0 to U+00FF in order.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf", "laquo", "not", "shy",
    "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro", "para", "middot", "cedil", "sup1", "ordm",
    "raquo", "frac14", "frac12", "frac34", "iquest", "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig",
    "Ccedil", "Egrave", "Eacute", "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve",
    "Oacute", "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute", "THORN",
    "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil", "egrave", "eacute", "ecirc",
    "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde", "ograve", "oacute", "ocirc", "otilde", "ouml",
    "divide", "oslash", "ugrave", "uacute", "ucirc", "uuml", "yacute", "thorn", "yuml",
];

fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end =
            rest[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).map(|e| e + 1).unwrap_or(rest.len());
        let name = &rest[1..end];
        let has_semicolon = rest[end..].starts_with(';');
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let n = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => num.parse::<u32>().ok(),
            };
            n.and_then(char::from_u32).map(String::from)
        } else {
            match name {
                "amp" => Some("&".into()),
                "lt" => Some("<".into()),
                "gt" => Some(">".into()),
                "quot" => Some("\"".into()),
                "apos" if has_semicolon => Some("'".into()),
                _ => LATIN1
                    .iter()
                    .position(|e| *e == name)
                    .and_then(|i| char::from_u32(0xa0 + i as u32))
                    .map(String::from),
            }
        };
        match decoded {
            Some(d) if !name.is_empty() => {
                out.push_str(&d);
                rest = &rest[end + usize::from(has_semicolon)..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
