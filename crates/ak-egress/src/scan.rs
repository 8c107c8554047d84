//! Byte-stream searches that survive chunk boundaries: [`Masker`] puts placeholders back in
//! place of real values on their way into the sandbox, [`Detector`] finds placeholders on
//! their way out. Both keep the last few bytes of a chunk until the next one arrives, so a
//! value split over two reads is still found.

use memchr::memmem::Finder;

/// Replaces each real value with its placeholder in a stream.
pub struct Masker {
    pairs: Vec<(Finder<'static>, Vec<u8>)>,
    /// Bytes held back: the longest value less one.
    keep: usize,
    carry: Vec<u8>,
}

/// Prints no value.
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker {{ {} values }}", self.pairs.len())
    }
}

impl Masker {
    /// `pairs`: (real value, placeholder).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Masker {
        let pairs: Vec<(Finder<'static>, Vec<u8>)> = pairs
            .into_iter()
            .filter(|(value, _)| !value.is_empty())
            .map(|(value, placeholder)| (Finder::new(value).into_owned(), placeholder.to_vec()))
            .collect();
        let keep = pairs
            .iter()
            .map(|(finder, _)| finder.needle().len() - 1)
            .max()
            .unwrap_or(0);
        Masker {
            pairs,
            keep,
            carry: Vec::new(),
        }
    }

    /// A masker of the same values with nothing held back.
    pub fn fresh(&self) -> Masker {
        Masker {
            pairs: self.pairs.clone(),
            keep: self.keep,
            carry: Vec::new(),
        }
    }

    /// The masked bytes of `data` that can be let through now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(data);
        let mut masked = self.replace_all();
        let hold = self.keep.min(masked.len());
        self.carry = masked.split_off(masked.len() - hold);
        masked
    }

    /// What is still held back, masked (at the end of the stream).
    pub fn finish(&mut self) -> Vec<u8> {
        let masked = self.replace_all();
        self.carry.clear();
        masked
    }

    fn replace_all(&self) -> Vec<u8> {
        let mut text = self.carry.clone();
        for (finder, placeholder) in &self.pairs {
            if finder.find(&text).is_some() {
                text = replace(&text, finder, placeholder);
            }
        }
        text
    }
}

/// `text` with every occurrence of `from`'s needle (left to right, not overlapping) replaced
/// by `to`.
pub fn replace(text: &[u8], from: &Finder<'_>, to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + to.len());
    let mut last = 0;
    for at in from.find_iter(text) {
        out.extend_from_slice(&text[last..at]);
        out.extend_from_slice(to);
        last = at + from.needle().len();
    }
    out.extend_from_slice(&text[last..]);
    out
}

/// Finds any of a set of placeholders in a stream.
pub struct Detector {
    finders: Vec<Finder<'static>>,
    keep: usize,
    tail: Vec<u8>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Detector {{ {} needles }}", self.finders.len())
    }
}

impl Detector {
    pub fn new<'a>(needles: impl IntoIterator<Item = &'a [u8]>) -> Detector {
        let finders: Vec<Finder<'static>> = needles
            .into_iter()
            .filter(|n| !n.is_empty())
            .map(|n| Finder::new(n).into_owned())
            .collect();
        let keep = finders
            .iter()
            .map(|f| f.needle().len() - 1)
            .max()
            .unwrap_or(0);
        Detector {
            finders,
            keep,
            tail: Vec::new(),
        }
    }

    /// The index of a needle found in the stream so far (with `data` added), if any.
    pub fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(data);
        let found = self
            .finders
            .iter()
            .position(|finder| finder.find(&window).is_some());
        let hold = self.keep.min(window.len());
        self.tail = window.split_off(window.len() - hold);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_over_chunks_are_masked() {
        let text = b"token=hunter2; again hunter2, and hunter";
        for split in 0..text.len() {
            let mut masker = Masker::new([(&b"hunter2"[..], &b"PH"[..])]);
            let mut out = masker.push(&text[..split]);
            out.extend(masker.push(&text[split..]));
            out.extend(masker.finish());
            assert_eq!(out, b"token=PH; again PH, and hunter", "split at {split}");
        }
        // Byte by byte.
        let mut masker = Masker::new([(&b"hunter2"[..], &b"PH"[..])]);
        let mut out = Vec::new();
        for byte in text {
            out.extend(masker.push(&[*byte]));
        }
        out.extend(masker.finish());
        assert_eq!(out, b"token=PH; again PH, and hunter");
    }

    #[test]
    fn placeholders_split_over_chunks_are_found() {
        let stream = b"GET / HTTP/1.1\r\nX: akph_abc\r\n\r\n";
        for split in 0..stream.len() {
            let mut detector = Detector::new([&b"nothing"[..], &b"akph_abc"[..]]);
            let first = detector.scan(&stream[..split]);
            let second = detector.scan(&stream[split..]);
            assert_eq!(first.or(second), Some(1), "split at {split}");
        }
        let mut detector = Detector::new([&b"akph_abc"[..]]);
        assert_eq!(detector.scan(b"akph_ab"), None);
        assert_eq!(detector.scan(b"d"), None);
    }
}
