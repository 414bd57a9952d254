//! SPIFFE IDs and trust domains, parsed once into canonical types.
//!
//! The rules are those of the SPIFFE ID specification: the scheme is `spiffe`, the trust domain
//! holds only lower-case letters, digits, `.`, `-` and `_`, each path segment holds only letters,
//! digits, `.`, `-` and `_`, no segment is empty, `.` or `..`, there is no trailing slash, and
//! nothing is percent-encoded. A string that breaks a rule is refused with the rule it broke,
//! never rewritten into a canonical form.

use std::fmt;

use thiserror::Error;

/// The scheme prefix every SPIFFE ID starts with.
const PREFIX: &str = "spiffe://";

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit for URI SANs).
pub const MAX_ID_LEN: usize = 2048;

/// Longest trust domain name accepted, in bytes (the SPIFFE spec's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a canonical SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("the SPIFFE ID is empty")]
    Empty,
    /// The input is longer than [`MAX_ID_LEN`].
    #[error("the SPIFFE ID is {0} bytes long, more than the limit of {MAX_ID_LEN}")]
    TooLong(usize),
    /// The scheme is `spiffe` in another case, such as `SPIFFE://`.
    #[error("the scheme must be written in lower case as `spiffe://`")]
    SchemeNotLowercase,
    /// The input does not start with `spiffe://`.
    #[error("the SPIFFE ID does not start with `spiffe://`")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("the trust domain is {0} bytes long, more than the limit of {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong(usize),
    /// The trust domain holds an upper-case letter.
    #[error("the trust domain must be lower case, found {0:?}")]
    TrustDomainNotLowercase(char),
    /// The trust domain holds a port, user info or another character outside `[a-z0-9._-]`.
    #[error("the trust domain holds {0:?}, outside the allowed set [a-z0-9._-]")]
    BadTrustDomainChar(char),
    /// A path segment is empty (`//` in the path).
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    /// The path ends with `/`.
    #[error("the path ends with a slash")]
    TrailingSlash,
    /// The input holds a `%` escape.
    #[error("the SPIFFE ID is percent-encoded, which the spec forbids")]
    PercentEncoded,
    /// The input has a query (`?`) or a fragment (`#`).
    #[error("the SPIFFE ID has a query or fragment ({0:?})")]
    QueryOrFragment(char),
    /// A path segment holds a character outside `[A-Za-z0-9._-]`.
    #[error("the path holds {0:?}, outside the allowed set [A-Za-z0-9._-]")]
    BadPathChar(char),
}

/// A trust domain name, such as `edgeward.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (without `spiffe://`).
    pub fn parse(name: &str) -> Result<Self, SpiffeIdError> {
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, such as `edgeward.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of a workload: `spiffe://<td>/ns/<namespace>/sa/<service account>`.
    pub fn workload_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::parse(&format!(
            "{PREFIX}{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))
    }

    /// The SPIFFE ID of a node proxy: `spiffe://<td>/node/<node name>`.
    pub fn node_id(&self, node: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::parse(&format!("{PREFIX}{}/node/{node}", self.0))
    }

    /// The SPIFFE ID of a control plane: `spiffe://<td>/edgeward/control`.
    pub fn control_id(&self) -> SpiffeId {
        SpiffeId::parse(&format!("{PREFIX}{}/edgeward/control", self.0))
            .expect("a valid trust domain always gives a valid control-plane ID")
    }

    /// The SPIFFE ID of the operator credential: `spiffe://<td>/edgeward/admin`.
    pub fn admin_id(&self) -> SpiffeId {
        SpiffeId::parse(&format!("{PREFIX}{}/edgeward/admin", self.0))
            .expect("a valid trust domain always gives a valid admin ID")
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

/// What a SPIFFE ID names, by the edgeward identity model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind<'a> {
    /// `/ns/<namespace>/sa/<service account>`
    Workload {
        /// The Kubernetes-style namespace.
        namespace: &'a str,
        /// The service account.
        service_account: &'a str,
    },
    /// `/node/<name>`
    Node(&'a str),
    /// `/edgeward/control`
    Control,
    /// `/edgeward/admin`
    Admin,
    /// Any other path, valid by the spec but not one edgeward issues.
    Other,
}

/// A canonical SPIFFE ID: `spiffe://<trust domain><path>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (the end of the trust domain).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID; refuses anything non-canonical with the reason.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(input.len()));
        }
        let rest = strip_scheme(input)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        check_trust_domain(&rest[..td_len])?;
        check_path(&rest[td_len..])?;
        Ok(Self {
            id: input.to_owned(),
            path_start: PREFIX.len() + td_len,
        })
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain name.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[PREFIX.len()..self.path_start]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// Classifies the path by the edgeward identity model.
    pub fn kind(&self) -> IdKind<'_> {
        let segments: Vec<&str> = self.path().split('/').skip(1).collect();
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => IdKind::Workload {
                namespace,
                service_account,
            },
            ["node", name] => IdKind::Node(name),
            ["edgeward", "control"] => IdKind::Control,
            ["edgeward", "admin"] => IdKind::Admin,
            _ => IdKind::Other,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn strip_scheme(input: &str) -> Result<&str, SpiffeIdError> {
    if let Some(rest) = input.strip_prefix(PREFIX) {
        return Ok(rest);
    }
    let head = input.get(..PREFIX.len()).unwrap_or(input);
    if head.eq_ignore_ascii_case(PREFIX) {
        Err(SpiffeIdError::SchemeNotLowercase)
    } else {
        Err(SpiffeIdError::WrongScheme)
    }
}

fn check_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(name.len()));
    }
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::TrustDomainNotLowercase(c)),
            '%' => return Err(SpiffeIdError::PercentEncoded),
            '?' | '#' => return Err(SpiffeIdError::QueryOrFragment(c)),
            _ => return Err(SpiffeIdError::BadTrustDomainChar(c)),
        }
    }
    Ok(())
}

/// Checks a path that is empty or starts with `/`.
fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path.split('/').skip(1) {
        check_segment(segment)?;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => return Err(SpiffeIdError::EmptySegment),
        "." | ".." => return Err(SpiffeIdError::DotSegment),
        _ => {}
    }
    for c in segment.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
            '%' => return Err(SpiffeIdError::PercentEncoded),
            '?' | '#' => return Err(SpiffeIdError::QueryOrFragment(c)),
            _ => return Err(SpiffeIdError::BadPathChar(c)),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_ids() {
        for ok in [
            "spiffe://edgeward.local",
            "spiffe://edgeward.local/ns/demo/sa/greeter",
            "spiffe://a-b_c.0/Path.With-Caps_9",
            "spiffe://td/node/node-1",
        ] {
            assert!(SpiffeId::parse(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn classifies_paths() {
        let td = TrustDomain::parse("edgeward.local").unwrap();
        let w = td.workload_id("demo", "greeter").unwrap();
        assert_eq!(
            w.kind(),
            IdKind::Workload {
                namespace: "demo",
                service_account: "greeter"
            }
        );
        assert_eq!(td.node_id("n1").unwrap().kind(), IdKind::Node("n1"));
        assert_eq!(td.control_id().kind(), IdKind::Control);
        assert_eq!(td.admin_id().kind(), IdKind::Admin);
        assert_eq!(
            SpiffeId::parse("spiffe://td/x").unwrap().kind(),
            IdKind::Other
        );
        assert_eq!(w.trust_domain_name(), "edgeward.local");
        assert_eq!(w.path(), "/ns/demo/sa/greeter");
    }

    /// The table of non-canonical IDs that issuance and verification must both refuse.
    pub(crate) fn bad_ids() -> Vec<(String, SpiffeIdError)> {
        use SpiffeIdError::*;
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        let long_td = format!("spiffe://{}/x", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        vec![
            ("".into(), Empty),
            ("spiffe://td/ns/a/".into(), TrailingSlash),
            ("spiffe://td/".into(), TrailingSlash),
            ("spiffe://td//ns".into(), EmptySegment),
            ("spiffe://td/ns/./sa".into(), DotSegment),
            ("spiffe://td/ns/../sa".into(), DotSegment),
            ("spiffe://td/ns/%41".into(), PercentEncoded),
            ("spiffe://t%64/ns".into(), PercentEncoded),
            ("spiffe://TD/ns".into(), TrustDomainNotLowercase('T')),
            ("SPIFFE://td/ns".into(), SchemeNotLowercase),
            ("Spiffe://td/ns".into(), SchemeNotLowercase),
            ("https://td/ns".into(), WrongScheme),
            ("spiffe:/td/ns".into(), WrongScheme),
            ("spiffe://".into(), EmptyTrustDomain),
            ("spiffe:///ns".into(), EmptyTrustDomain),
            ("spiffe://td:8080/ns".into(), BadTrustDomainChar(':')),
            ("spiffe://user@td/ns".into(), BadTrustDomainChar('@')),
            ("spiffe://td/ns/a b".into(), BadPathChar(' ')),
            ("spiffe://td/ns/a*b".into(), BadPathChar('*')),
            ("spiffe://td/ns/é".into(), BadPathChar('é')),
            ("spiffe://td/ns?x=1".into(), QueryOrFragment('?')),
            ("spiffe://td/ns#frag".into(), QueryOrFragment('#')),
            (long.clone(), TooLong(long.len())),
            (long_td, TrustDomainTooLong(MAX_TRUST_DOMAIN_LEN + 1)),
        ]
    }

    #[test]
    fn refuses_every_non_canonical_id_with_its_reason() {
        for (input, reason) in bad_ids() {
            assert_eq!(SpiffeId::parse(&input), Err(reason), "input {input:?}");
        }
    }

    #[test]
    fn trust_domain_rules_apply_to_bare_names() {
        assert!(TrustDomain::parse("edge.example").is_ok());
        assert_eq!(
            TrustDomain::parse("Edge"),
            Err(SpiffeIdError::TrustDomainNotLowercase('E'))
        );
        assert_eq!(TrustDomain::parse(""), Err(SpiffeIdError::EmptyTrustDomain));
        assert_eq!(
            TrustDomain::parse("td/x"),
            Err(SpiffeIdError::BadTrustDomainChar('/'))
        );
    }

    #[test]
    fn builders_refuse_bad_segments() {
        let td = TrustDomain::parse("td").unwrap();
        assert_eq!(td.workload_id("", "sa"), Err(SpiffeIdError::EmptySegment));
        assert_eq!(td.workload_id("ns", ".."), Err(SpiffeIdError::DotSegment));
        assert_eq!(td.node_id("a/"), Err(SpiffeIdError::TrailingSlash));
    }
}
