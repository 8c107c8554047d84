//! Image references (`busybox`, `127.0.0.1:5000/team/app:1`, `repo@sha256:…`) parsed and
//! normalised the way Docker does, without a regular expression.
//!
//! `oci_client::Reference` parses with one large regular expression that is compiled on
//! first use: ~40 ms of CPU, paid by every CLI process that runs `--image NAME`, 8× the
//! whole sandbox (docs/benchmarks.md). This parser accepts exactly the same grammar
//! (distribution's `reference` package; ASCII only, where the regular expression's `\w` in
//! tags also took other Unicode letters, which Docker's does not) and produces the same
//! normalised name; a unit test compares the two on a corpus and on random strings. The
//! pull itself still hands `oci_client` its own `Reference`.

use crate::ImageError;

/// The longest repository path distribution accepts (after normalisation).
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// The longest tag: one word character and up to 127 more.
const TAG_LENGTH_MAX: usize = 128;
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_REPOSITORIES: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// `busybox` → `docker.io/library/busybox:latest`: one name per image, however written.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let invalid = |why: &str| ImageError::InvalidReference {
        reference: reference.to_string(),
        why: why.to_string(),
    };
    if reference.is_empty() {
        return Err(invalid("it is empty"));
    }
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((before, digest)) => (before, Some(digest)),
        None => (reference, None),
    };
    // A tag follows the last ':' that comes after the last '/' (a registry's port is
    // always followed by a '/').
    let (name, tag) = match name_and_tag.rfind(':') {
        Some(colon) if !name_and_tag[colon..].contains('/') => {
            (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
        }
        _ => (name_and_tag, None),
    };
    if !valid_name(name) {
        return Err(invalid(
            "the name must be [REGISTRY[:PORT]/]PATH with lowercase path components \
             (letters, digits, and '.', '_', '__' or dashes between them)",
        ));
    }
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err(invalid(
            "a tag is 1 to 128 of A-Z a-z 0-9 _ . - and does not start with '.' or '-'",
        ));
    }
    if let Some(digest) = digest {
        check_digest(digest).map_err(invalid)?;
    }
    let (registry, repository) = split_registry(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(invalid("the repository name is longer than 255 characters"));
    }
    let mut whole = format!("{registry}/{repository}");
    match (tag, digest) {
        (None, None) => {
            whole.push(':');
            whole.push_str(DEFAULT_TAG);
        }
        (tag, digest) => {
            if let Some(tag) = tag {
                whole.push(':');
                whole.push_str(tag);
            }
            if let Some(digest) = digest {
                whole.push('@');
                whole.push_str(digest);
            }
        }
    }
    Ok(whole)
}

/// `[domain/]path`: the first segment may be a registry (a host name of dotted components
/// with an optional port); every other segment is a path component.
fn valid_name(name: &str) -> bool {
    let mut segments = name.split('/');
    let Some(first) = segments.next() else {
        return false;
    };
    let rest: Vec<&str> = segments.collect();
    let rest_valid = rest.iter().all(|segment| valid_path_component(segment));
    if !rest_valid {
        return false;
    }
    // The first segment is a path component, or (when a path follows) a registry.
    valid_path_component(first) || (!rest.is_empty() && valid_domain(first))
}

/// `[a-z0-9]+` runs joined by exactly one separator: `.`, `_`, `__` or one or more `-`.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut index = 0;
    loop {
        let run_start = index;
        while index < bytes.len() && alnum(bytes[index]) {
            index += 1;
        }
        if index == run_start {
            return false;
        }
        if index == bytes.len() {
            return true;
        }
        let separator_start = index;
        while index < bytes.len() && !alnum(bytes[index]) {
            index += 1;
        }
        let separator = &component[separator_start..index];
        let known = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !known {
            return false;
        }
    }
}

/// `host[:port]` where host is dot-separated labels of `[a-zA-Z0-9-]` that neither start
/// nor end with a dash.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_LENGTH_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:hex`, where only the sha256, sha384 and sha512 algorithms with hex of their
/// exact length are accepted.
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("a digest is ALGORITHM:HEX");
    };
    let algorithm_valid = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let mut bytes = part.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric())
    });
    if !algorithm_valid || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a digest is ALGORITHM:HEX with at least 32 hex digits");
    }
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("only sha256, sha384 and sha512 digests are supported"),
    };
    if hex.len() != expected {
        return Err("the digest's hex part has the wrong length for its algorithm");
    }
    Ok(())
}

/// Docker's rule: the first segment is a registry only if it has a '.' or a ':' or is
/// `localhost`; Docker Hub's single-segment names are its official `library/` images.
fn split_registry(name: &str) -> (&str, String) {
    let (mut registry, remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DOCKER_HUB, name),
    };
    if registry == DOCKER_HUB_LEGACY {
        registry = DOCKER_HUB;
    }
    let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
        format!("{OFFICIAL_REPOSITORIES}/{remainder}")
    } else {
        remainder.to_string()
    };
    (registry, repository)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    /// What `oci_client` (the regular expression this parser replaces) makes of it.
    fn reference_crate(reference: &str) -> Option<String> {
        reference
            .parse::<oci_client::Reference>()
            .ok()
            .map(|r| r.whole())
    }

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("team/app", "docker.io/team/app:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
            ("ghcr.io/o/r", "ghcr.io/o/r:latest"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input).unwrap(), expected, "{input}");
        }
        let pinned = format!("busybox@{SHA}");
        assert_eq!(
            normalize(&pinned).unwrap(),
            format!("docker.io/library/busybox@{SHA}")
        );
    }

    #[test]
    fn refuses_what_docker_refuses_with_a_reason() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "/a",
            "a/",
            "a:",
            "a:-tag",
            "a@sha256:abc",
            "a@md5:0123456789abcdef0123456789abcdef",
            "a..b",
            "a-.b",
            "-a",
            "a b",
            "a/../b",
        ] {
            let err = normalize(bad).expect_err(bad).to_string();
            assert!(err.contains("invalid image reference"), "{bad}: {err}");
        }
    }

    /// Every string of a corpus and thousands of random ones over the grammar's alphabet:
    /// accepted by both parsers with the same normalised name, or refused by both.
    #[test]
    fn agrees_with_the_regular_expression() {
        let long_tag = "t".repeat(128);
        let too_long_tag = "t".repeat(129);
        let long_name = format!("r/{}", "a".repeat(253));
        let too_long_name = format!("r/{}", "a".repeat(254));
        let mut corpus: Vec<String> = [
            "a",
            "a_b",
            "a__b",
            "a___b",
            "a---b",
            "a.b",
            "a._b",
            "a-_b",
            "A/b",
            "a/B",
            "Host.example/b",
            "host-/b",
            "-host.x/b",
            "h.x:/b",
            "h.x:12/b",
            "h:12:13/b",
            "h.x:12",
            "a:T_a.g-1",
            "a:.t",
            "a@sha384:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a:t@sha256:00",
            "a@sha+x:0123456789abcdef0123456789abcdef",
            "a@1sha:0123456789abcdef0123456789abcdef",
            "a@@b",
            "docker.io/busybox",
            "docker.io/a/b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        corpus.extend([
            format!("a:{long_tag}"),
            format!("a:{too_long_tag}"),
            long_name,
            too_long_name,
            format!("a:t@{SHA}"),
            format!("h.x:1/a@{SHA}"),
        ]);
        // A small deterministic generator (no dependency for a test): xorshift.
        let alphabet = b"ab0Z._-_/:@.-sha256";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let length = 1 + (next() % 12) as usize;
            let s: String = (0..length)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect();
            corpus.push(s);
        }
        for input in &corpus {
            assert_eq!(
                normalize(input).ok(),
                reference_crate(input),
                "the two parsers disagree on {input:?}"
            );
        }
    }
}
