//! Image references: parsing and normalization with the rules Docker and containerd apply,
//! so `nginx` names the same image here as it does for `docker pull` or `crictl pull`.
//!
//! Grammar (from the distribution reference spec):
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [domain "/"] path-component ("/" path-component)*
//! domain     := host [":" port]            host := domain-name | "[" ipv6 "]"
//! path-comp  := [a-z0-9]+ (separator [a-z0-9]+)*   separator := [_.] | "__" | "-"+
//! tag        := [\w][\w.-]{0,127}
//! digest     := algorithm ":" hex          (sha256: exactly 64 lowercase hex)
//! ```
//! Normalization: the first component is a registry only if it contains `.` or `:` or is
//! `localhost`; otherwise the registry is `docker.io`, single-component Docker Hub names get
//! `library/`, and a reference without tag or digest gets `:latest`.

use std::fmt;

use super::ImageError;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_REGISTRY: &str = "index.docker.io";
const NAME_TOTAL_MAX: usize = 255;

/// A fully normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest`, the form kept in an image's repo digests.
    pub fn digest_form(&self) -> Option<String> {
        self.digest
            .as_ref()
            .map(|d| format!("{}@{}", self.name(), d))
    }

    /// `registry/repository:tag`, the form kept in an image's repo tags.
    pub fn tag_form(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name(), t))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Same as [`parse`]: every parsed reference is normalized.
pub fn normalize(s: &str) -> Result<Reference, ImageError> {
    parse(s)
}

/// Parse and normalize `s`. The error names the reference and what is wrong with it.
pub fn parse(s: &str) -> Result<Reference, ImageError> {
    let bad = |reason: &str| ImageError::InvalidReference {
        reference: s.to_string(),
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(bad("reference is empty"));
    }
    if s.len() == 64 && is_lower_hex(s) {
        return Err(bad(
            "a 64-character hexadecimal string is an image id, not a repository name",
        ));
    }

    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            validate_digest(digest).map_err(|r| bad(&r))?;
            (rest, Some(digest.to_string()))
        }
        None => (s, None),
    };

    // A tag is whatever follows the last ':' if no '/' comes after it; a ':' before a '/'
    // is a registry port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag).map_err(|r| bad(&r))?;
    }
    if name.is_empty() {
        return Err(bad("repository name is empty"));
    }

    let (registry, remainder) = split_registry(name);
    if let Some(registry) = &registry {
        validate_domain(registry).map_err(|r| bad(&r))?;
    }
    if remainder.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(bad(&format!(
            "repository name ({remainder}) must be lowercase"
        )));
    }
    for component in remainder.split('/') {
        validate_path_component(component).map_err(|r| bad(&r))?;
    }
    if name.len() > NAME_TOTAL_MAX {
        return Err(bad(&format!(
            "repository name must not be longer than {NAME_TOTAL_MAX} characters"
        )));
    }

    let registry = match registry {
        None => DEFAULT_REGISTRY.to_string(),
        Some(r) if r == LEGACY_REGISTRY => DEFAULT_REGISTRY.to_string(),
        Some(r) => r,
    };
    let repository = if registry == DEFAULT_REGISTRY && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder.to_string()
    };
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some(DEFAULT_TAG.to_string()),
        (None, Some(_)) => None,
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Docker's splitDockerDomain: the first component is a registry only when it looks like a
/// host (has `.` or `:`, is `localhost`, or has uppercase letters, which a path never has).
fn split_registry(name: &str) -> (Option<String>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first.to_string()), rest)
        }
        _ => (None, name),
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
            tag.len() <= 128
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

/// Validate `algorithm:hex`; sha256 and sha512 must have their exact hex lengths.
pub fn validate_digest(digest: &str) -> Result<(), String> {
    let err = || format!("invalid digest {digest:?}");
    let (algorithm, hex) = digest.split_once(':').ok_or_else(err)?;
    let algo_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|c| {
            let mut cs = c.chars();
            matches!(cs.next(), Some(f) if f.is_ascii_alphabetic())
                && cs.all(|c| c.is_ascii_alphanumeric())
        });
    if !algo_ok {
        return Err(err());
    }
    let want_len = match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = match want_len {
        Some(n) => hex.len() == n && is_lower_hex(hex),
        None => hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
    };
    if hex_ok {
        Ok(())
    } else {
        Err(err())
    }
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let err = || format!("invalid registry host {domain:?}");
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(err)?;
        if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(err());
        }
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(err)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host.split('.').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !ok {
            return Err(err());
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
    }
    Ok(())
}

fn validate_path_component(c: &str) -> Result<(), String> {
    let err = || {
        if c.is_empty() {
            "repository name has an empty path component".to_string()
        } else {
            format!("invalid repository path component {c:?}")
        }
    };
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return Err(err());
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one '_', exactly "__", or any number of '-'.
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(err());
        }
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:4b825dc642cb6eb9a060e54bf8d69288fbee4904a1e8f0e2d8e1b6a3c2d1e0f9";

    #[test]
    fn normalization_table() {
        let cases: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("user/app", "docker.io/user/app:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
            ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c:latest"),
            ("[::1]:5000/x", "[::1]:5000/x:latest"),
            (
                "my-reg.example.com/a__b/c-d.e_f",
                "my-reg.example.com/a__b/c-d.e_f:latest",
            ),
            ("a---b", "docker.io/library/a---b:latest"),
        ];
        for (input, want) in cases {
            let r = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *want, "input {input}");
        }
    }

    #[test]
    fn digest_references() {
        let r = parse(&format!("host:5000/x/y@{D}")).unwrap();
        assert_eq!(r.registry, "host:5000");
        assert_eq!(r.repository, "x/y");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("host:5000/x/y@{D}"));
        assert_eq!(r.digest_form().unwrap(), format!("host:5000/x/y@{D}"));

        let r = parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1.36@{D}"));
    }

    #[test]
    fn invalid_references_name_the_reference() {
        let bad = [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "a//b",
            "/a",
            "a/",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@sha256:4B825DC642CB6EB9A060E54BF8D69288FBEE4904A1E8F0E2D8E1B6A3C2D1E0F9",
            "busybox@",
            "a..b",
            "a_-b",
            "-a",
            "a b",
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904a1e8f0e2d8e1b6a3c2d1e0f9",
            "host:port/x",
        ];
        for input in bad {
            let err = parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{input:?}")),
                "error for {input:?} does not name it: {msg}"
            );
        }
    }

    #[test]
    fn long_tag_rejected() {
        let tag = "a".repeat(129);
        assert!(parse(&format!("busybox:{tag}")).is_err());
        let tag = "a".repeat(128);
        assert!(parse(&format!("busybox:{tag}")).is_ok());
    }
}
