//! Reading nftables state: the rules of a `nft -j list ...` listing (libnftables'
//! JSON schema), reduced to what podrun needs to find and delete its own rules.
//!
//! Only the fields that identify a rule are read (family, table, chain, handle,
//! comment). A rule's statements are not: they are skipped whatever they hold, so a
//! statement that a newer nft adds, or that someone else put in the same table,
//! cannot make a listing unreadable and leave podrun's rules behind.

use serde::Deserialize;

/// One rule of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NftRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    #[serde(default)]
    pub comment: Option<String>,
}

impl NftRule {
    /// The nft command deleting this rule.
    pub fn delete_command(&self) -> String {
        format!(
            "delete rule {} {} {} handle {}\n",
            self.family, self.table, self.chain, self.handle
        )
    }
}

#[derive(Deserialize)]
struct Listing {
    nftables: Vec<ListedObject>,
}

/// Each element of the `nftables` array is an object with one key naming its kind
/// (`metainfo`, `table`, `chain`, `rule`, `set`, ...); only rules are kept.
#[derive(Deserialize)]
struct ListedObject {
    #[serde(default)]
    rule: Option<NftRule>,
}

/// The rules of a `nft -j list ruleset|table|chain` output, in listing order.
pub fn parse_rules(json: &str) -> Result<Vec<NftRule>, serde_json::Error> {
    let listing: Listing = serde_json::from_str(json)?;
    Ok(listing
        .nftables
        .into_iter()
        .filter_map(|o| o.rule)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list table ip podrun-portmap` on Debian 12 (nft 1.0.6).
    const PORTMAP_IP: &str = include_str!("../testdata/nft/portmap-ip.json");

    #[test]
    fn reads_every_rule_with_its_handle_and_comment() {
        let rules = parse_rules(PORTMAP_IP).unwrap();
        let got: Vec<(&str, u64, Option<&str>)> = rules
            .iter()
            .map(|r| (r.chain.as_str(), r.handle, r.comment.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("prerouting", 4, Some("podrun-portmap:net:abc")),
                ("prerouting", 8, Some("podrun-portmap:net:def # handle 99")),
                ("prerouting", 9, None),
                ("output", 5, Some("podrun-portmap:net:abc")),
                ("postrouting", 6, Some("podrun-portmap:net:abc")),
                ("postrouting", 7, Some("podrun-portmap:net:abc")),
                ("postrouting", 10, Some("podrun-portmap:net:abc")),
                ("postrouting", 12, Some("podrun-portmap:net:abc")),
            ]
        );
        assert!(rules
            .iter()
            .all(|r| r.family == "ip" && r.table == "podrun-portmap"));
        assert_eq!(
            rules[0].delete_command(),
            "delete rule ip podrun-portmap prerouting handle 4\n"
        );
    }

    #[test]
    fn statements_nft_may_add_later_do_not_spoil_the_listing() {
        let json = r#"{"nftables": [
            {"metainfo": {"version": "9.9", "json_schema_version": 7}},
            {"flowtable": {"family": "ip", "name": "ft", "table": "t", "handle": 3}},
            {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 11,
                      "comment": "podrun:x", "future_field": [1, 2],
                      "expr": [{"some-new-statement": {"with": {"nested": true}}}]}}
        ]}"#;
        let rules = parse_rules(json).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].handle, 11);
        assert_eq!(rules[0].comment.as_deref(), Some("podrun:x"));
    }

    #[test]
    fn text_output_is_rejected_rather_than_misread() {
        assert!(parse_rules("table ip podrun { # handle 1\n}\n").is_err());
    }
}
