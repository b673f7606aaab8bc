//! `oci://HOST[:PORT]/REPO:TAG` and `oci://HOST[:PORT]/REPO@sha256:<hex>`:
//! parsing and checking a registry reference by the distribution spec's
//! grammar (repository names, tags), and the [`Digest`] of content.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::OciError;

/// The URL scheme of a registry reference.
pub const SCHEME: &str = "oci://";

/// Whether `source` is a registry reference (`oci://...`) rather than a
/// file or an http(s) URL.
pub fn is_oci(source: &str) -> bool {
    source.starts_with(SCHEME)
}

/// A content digest, `sha256:` and 64 lower-case hex digits (the only
/// algorithm abkit accepts; the spec's default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).into())
    }

    /// The digest with these SHA-256 bytes.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = String;

    fn from_str(text: &str) -> Result<Digest, String> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(format!("{text:?} is not a digest (sha256:<64 hex digits>)"));
        };
        if algorithm != "sha256" {
            return Err(format!(
                "digest algorithm {algorithm:?} is not supported (only sha256)"
            ));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "{text:?} is not a sha256 digest (64 lower-case hex digits)"
            ));
        }
        Ok(Digest(text.to_owned()))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A bundle in a registry: where, which repository, and which version (a
/// tag, a digest, or both: then the digest decides and the tag is only a
/// name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `HOST` or `HOST:PORT` (the key in a docker config's `auths`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `oci://HOST[:PORT]/REPO:TAG`, `oci://HOST[:PORT]/REPO@sha256:HEX`
    /// or `...REPO:TAG@sha256:HEX`. A reference without tag or digest is
    /// refused: abkit never guesses `latest`.
    pub fn parse(text: &str) -> Result<Reference, OciError> {
        let bad = |reason: String| OciError::BadReference {
            reference: text.to_owned(),
            reason,
        };
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with oci://".into()))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it has no repository (oci://HOST[:PORT]/REPO:TAG)".into()))?;
        check_registry(registry).map_err(bad)?;
        let (name_tag, digest) = match path.split_once('@') {
            Some((name_tag, digest)) => (name_tag, Some(digest.parse::<Digest>().map_err(bad)?)),
            None => (path, None),
        };
        let (repository, tag) = match name_tag.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (name_tag, None),
        };
        check_repository(repository).map_err(bad)?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(bad)?;
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad(
                "it names no version: add :TAG or @sha256:DIGEST (abkit does not assume :latest)"
                    .into(),
            ));
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// What goes after `/manifests/`: the digest when there is one, else
    /// the tag.
    pub fn target(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.as_str(),
            (None, Some(tag)) => tag,
            (None, None) => "",
        }
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(text: &str) -> Result<Reference, OciError> {
        Reference::parse(text)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `HOST[:PORT]`: a DNS name or IPv4 address, or `[IPv6]`, and a port.
fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {registry:?}: unclosed [ of an IPv6 address"))?;
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(format!("registry {registry:?}: not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("registry {registry:?}: junk after the IPv6 address")
                })?),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if host.is_empty() {
        return Err("the registry host is empty".into());
    }
    if !registry.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!("registry host {host:?} is not a host name"));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("registry port {port:?} is not a port number"));
    }
    Ok(())
}

/// The spec's repository name: path components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
fn check_repository(name: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "repository {name:?} is not a valid name (lower-case letters, digits and \
             separators . _ __ - between them, components joined by /)"
        )
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    for component in name.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(bad());
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            // A separator run: ".", "_", "__" or "-+", then an alphanumeric.
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
            if !ok {
                return Err(bad());
            }
        }
    }
    Ok(())
}

/// The spec's tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not valid (letters, digits, _ . -, not starting with . or -, at most 128)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn tags_digests_ports_and_nested_repositories_parse() {
        let r = Reference::parse("oci://127.0.0.1:5000/os/demo:1.2.0").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "os/demo");
        assert_eq!(r.tag.as_deref(), Some("1.2.0"));
        assert_eq!(r.digest, None);
        assert_eq!(r.target(), "1.2.0");
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/os/demo:1.2.0");

        let r = Reference::parse(&format!("oci://reg.example/a/b/c@{D}")).unwrap();
        assert_eq!(r.registry, "reg.example");
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.tag, None);
        assert_eq!(r.target(), D);

        let r = Reference::parse(&format!("oci://[::1]:5000/x:y@{D}")).unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.tag.as_deref(), Some("y"));
        assert_eq!(r.target(), D, "the digest decides");
        assert_eq!(r.to_string(), format!("oci://[::1]:5000/x:y@{D}"));

        assert_eq!(Digest::of(b"{}").as_str(), D);
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        for (text, reason) in [
            ("http://h/r:t", "oci://"),
            ("oci://h", "no repository"),
            ("oci:///r:t", "host is empty"),
            ("oci://h:0/r:t", "port"),
            ("oci://h:99999/r:t", "port"),
            ("oci://h_x/r:t", "host name"),
            ("oci://h/r", "no version"),
            ("oci://h/R:t", "repository"),
            ("oci://h/r-:t", "repository"),
            ("oci://h/a//b:t", "repository"),
            ("oci://h/a..b:t", "repository"),
            ("oci://h/r:-t", "tag"),
            ("oci://h/r:", "tag"),
            ("oci://h/r@sha512:abcd", "only sha256"),
            ("oci://h/r@sha256:ABC", "64 lower-case"),
        ] {
            match Reference::parse(text) {
                Err(OciError::BadReference { reason: got, .. }) => {
                    assert!(got.contains(reason), "{text}: {got}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Separators the spec allows.
        for ok in ["a.b", "a_b", "a__b", "a---b", "a/b.c/d"] {
            Reference::parse(&format!("oci://h/{ok}:t")).unwrap();
        }
        let long_tag = "t".repeat(129);
        assert!(Reference::parse(&format!("oci://h/r:{long_tag}")).is_err());
    }
}
