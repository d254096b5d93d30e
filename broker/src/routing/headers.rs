//! Headers exchanges: binding arguments compared with message headers under `x-match`, and
//! the limits on header tables that keep that comparison (and its decoding) bounded.
//!
//! # Matching by merge
//! As in RabbitMQ, a binding's arguments are sorted by key once, at bind time, and a
//! message's headers once per routed message ([`MessageHeaders`], shared by every binding of
//! every exchange along the alternate chain). A binding then walks its arguments in order and
//! finds each key in the part of the headers not yet passed over, by binary search: at most
//! `arguments × log(headers)` comparisons, where the former linear `find` per argument cost
//! `arguments × headers` per binding.

use std::cell::OnceCell;

use sluice_client::wire::{headers_len, HeaderValue};

use super::header_eq::values_equal;

/// The binding argument that selects the matching mode; never compared itself.
const X_MATCH: &str = "x-match";

/// Most entries in one header table by default: a message's headers or a binding's arguments
/// (protocol.md §14; `max_header_entries` changes it). Generous for any application
/// (RabbitMQ's own `x-death` bookkeeping uses a handful) while keeping the decoding and sorting
/// done under the routing lock small.
pub const MAX_HEADER_ENTRIES: usize = 1024;

/// Most bytes of one encoded header table (its `count` field included) by default, checked
/// before the table is decoded (protocol.md §14; `max_header_bytes` changes it). 64 KiB holds
/// 1 024 entries of 60-byte key and value.
pub const MAX_HEADERS_LEN: usize = 64 * 1024;

/// The limits on one header table: its entries and encoded bytes. Nesting is bounded by the
/// codec itself ([`MAX_HEADER_DEPTH`](sluice_client::wire::MAX_HEADER_DEPTH), protocol.md
/// §2.3), whatever the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Most entries.
    pub max_entries: usize,
    /// Most encoded bytes, the `count` field included.
    pub max_bytes: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_entries: MAX_HEADER_ENTRIES,
            max_bytes: MAX_HEADERS_LEN,
        }
    }
}

/// Why a header table is refused: it exceeds its [`HeaderLimits`]. Reported as
/// `INVALID_ARGUMENT`, for that message or that `Bind` only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderLimitError {
    /// More entries than the limit.
    #[error("{count} header entries exceed the limit of {limit} (max_header_entries)")]
    TooManyEntries {
        /// Entries in the table.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// More encoded bytes than the limit.
    #[error("a header table of {len} bytes exceeds the limit of {limit} (max_header_bytes)")]
    TooLong {
        /// Encoded length of the table.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl HeaderLimits {
    /// Checks the encoded length of a header table, before decoding it.
    pub fn check_len(&self, len: usize) -> Result<(), HeaderLimitError> {
        if len > self.max_bytes {
            return Err(HeaderLimitError::TooLong {
                len,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Checks the number of entries of a decoded header table.
    pub fn check_count(&self, count: usize) -> Result<(), HeaderLimitError> {
        if count > self.max_entries {
            return Err(HeaderLimitError::TooManyEntries {
                count,
                limit: self.max_entries,
            });
        }
        Ok(())
    }

    /// Checks both limits on a decoded header table (binding arguments).
    pub fn check(&self, headers: &[(String, HeaderValue)]) -> Result<(), HeaderLimitError> {
        self.check_count(headers.len())?;
        self.check_len(headers_len(headers))
    }
}

/// A message's headers as routing reads them: sorted by key on first use, then shared by
/// every headers binding the message is compared with.
pub(super) struct MessageHeaders<'a> {
    given: &'a [(String, HeaderValue)],
    sorted: OnceCell<Vec<&'a (String, HeaderValue)>>,
}

impl<'a> MessageHeaders<'a> {
    /// Wraps the headers as given; nothing is sorted until a headers binding needs it.
    pub(super) fn new(given: &'a [(String, HeaderValue)]) -> Self {
        Self {
            given,
            sorted: OnceCell::new(),
        }
    }

    /// The value of the first header named `key`, as given.
    pub(super) fn get(&self, key: &str) -> Option<&'a HeaderValue> {
        self.given.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The headers sorted by key, one entry per key. A repeated key (the wire refuses them;
    /// callers of the routing API might not) keeps its first occurrence, as a `find` would:
    /// the sort is stable and `dedup_by` keeps the earlier of two equal neighbours.
    fn sorted(&self) -> &[&'a (String, HeaderValue)] {
        self.sorted.get_or_init(|| {
            let mut sorted: Vec<_> = self.given.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            sorted.dedup_by(|later, earlier| later.0 == earlier.0);
            sorted
        })
    }
}

/// One headers binding's arguments, parsed once at bind time.
#[derive(Debug, Clone)]
pub(super) struct HeadersFilter {
    /// `any` instead of `all`.
    any: bool,
    /// The arguments that take part in matching (`x-` ones only in the `-with-x` modes),
    /// sorted by key (stably: a repeated key, which the wire refuses, is compared twice).
    args: Vec<(String, HeaderValue)>,
}

impl HeadersFilter {
    /// Parses binding arguments; the error says why `x-match` is invalid.
    pub(super) fn parse(arguments: &[(String, HeaderValue)]) -> Result<Self, String> {
        let (any, with_x) = match arguments.iter().find(|(k, _)| k == X_MATCH) {
            None => (false, false),
            Some((_, HeaderValue::Str(mode))) => match mode.as_str() {
                "all" => (false, false),
                "any" => (true, false),
                "all-with-x" => (false, true),
                "any-with-x" => (true, true),
                other => {
                    return Err(format!(
                        "invalid x-match value '{other}': expected all, any, all-with-x \
                         or any-with-x"
                    ))
                }
            },
            Some((_, other)) => {
                return Err(format!(
                    "x-match must be a string, not a value of type {}",
                    other.type_name()
                ))
            }
        };
        let mut args: Vec<_> = arguments
            .iter()
            .filter(|(k, _)| k != X_MATCH && (with_x || !k.starts_with("x-")))
            .cloned()
            .collect();
        args.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { any, args })
    }

    /// Whether a message with these headers matches.
    pub(super) fn matches(&self, headers: &MessageHeaders<'_>) -> bool {
        // Both lists are sorted by key, so the headers before an argument's key are never
        // needed by a later argument: each search starts where the previous one ended.
        let mut rest = headers.sorted();
        let mut has = |(key, value): &(String, HeaderValue)| {
            rest = &rest[rest.partition_point(|(k, _)| k < key)..];
            rest.first().is_some_and(|(k, v)| {
                // A void argument asks only for the key, as in RabbitMQ.
                k == key && (matches!(value, HeaderValue::Void) || values_equal(value, v))
            })
        };
        if self.any {
            self.args.iter().any(&mut has)
        } else {
            self.args.iter().all(&mut has)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn s(v: &str) -> HeaderValue {
        HeaderValue::Str(v.to_owned())
    }

    fn h(pairs: &[(&str, HeaderValue)]) -> Vec<(String, HeaderValue)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn matches(args: &[(&str, HeaderValue)], headers: &[(&str, HeaderValue)]) -> bool {
        let headers = h(headers);
        HeadersFilter::parse(&h(args))
            .unwrap()
            .matches(&MessageHeaders::new(&headers))
    }

    /// The former matcher, one linear `find` per argument: the reference the merge must
    /// agree with.
    fn naive_matches(
        arguments: &[(String, HeaderValue)],
        headers: &[(String, HeaderValue)],
    ) -> bool {
        let mode = arguments.iter().find(|(k, _)| k == X_MATCH).map(|(_, v)| v);
        let mode = match mode {
            None => "all",
            Some(HeaderValue::Str(m)) => m.as_str(),
            Some(_) => unreachable!("generated modes are strings"),
        };
        let with_x = mode.ends_with("-with-x");
        let has = |(key, value): &&(String, HeaderValue)| {
            headers
                .iter()
                .find(|(k, _)| k == key)
                .is_some_and(|(_, v)| {
                    matches!(value, HeaderValue::Void)
                        || super::super::header_eq::values_equal(value, v)
                })
        };
        let mut args = arguments
            .iter()
            .filter(|(k, _)| k != X_MATCH && (with_x || !k.starts_with("x-")));
        if mode.starts_with("any") {
            args.any(|a| has(&a))
        } else {
            args.all(|a| has(&a))
        }
    }

    #[test]
    fn all_needs_every_argument_with_equal_value_and_type() {
        let args = [("format", s("pdf")), ("pages", HeaderValue::Int(1))];
        assert!(matches(
            &args,
            &[("pages", HeaderValue::Int(1)), ("format", s("pdf"))]
        ));
        assert!(matches(
            &args,
            &[
                ("format", s("pdf")),
                ("pages", HeaderValue::Int(1)),
                ("extra", s("x"))
            ]
        ));
        assert!(!matches(&args, &[("format", s("pdf"))]));
        assert!(!matches(&args, &[("format", s("pdf")), ("pages", s("1"))]));
        assert!(!matches(
            &args,
            &[("format", s("pdf")), ("pages", HeaderValue::Int(2))]
        ));
        assert!(!matches(&args, &[]));
        // An explicit x-match all is the same as none.
        let explicit = [("x-match", s("all")), ("format", s("pdf"))];
        assert!(matches(&explicit, &[("format", s("pdf"))]));
        assert!(!matches(&explicit, &[("format", s("zip"))]));
    }

    #[test]
    fn any_needs_one_argument() {
        let args = [
            ("x-match", s("any")),
            ("a", HeaderValue::Int(1)),
            ("b", HeaderValue::Bool(true)),
        ];
        assert!(matches(&args, &[("a", HeaderValue::Int(1))]));
        assert!(matches(
            &args,
            &[("a", HeaderValue::Int(9)), ("b", HeaderValue::Bool(true))]
        ));
        assert!(!matches(
            &args,
            &[("a", s("1")), ("b", HeaderValue::Bool(false))]
        ));
        assert!(!matches(&args, &[]));
    }

    #[test]
    fn values_compare_as_rabbitmq_compares_them() {
        let bytes = HeaderValue::Bytes(Bytes::from_static(b"1"));
        assert!(!matches(&[("k", HeaderValue::Int(1))], &[("k", s("1"))]));
        // Strings and bytes are both Erlang binaries to RabbitMQ.
        assert!(matches(&[("k", s("1"))], &[("k", bytes.clone())]));
        assert!(matches(
            &[("k", HeaderValue::Int(1))],
            &[("k", HeaderValue::Float(1.0))]
        ));
        assert!(!matches(
            &[("k", HeaderValue::Bool(true))],
            &[("k", HeaderValue::Int(1))]
        ));
        assert!(matches(&[("k", bytes.clone())], &[("k", bytes)]));
    }

    /// The shared table of tests/data/routing_exact (also run end to end by
    /// tests/tests/routing_exact.rs), values in the HTTP API's JSON form.
    #[test]
    fn the_shared_case_table_matches_as_rabbitmq() {
        let doc: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/data/routing_exact/header_cases.json"
        ))
        .unwrap();
        let table = |v: &serde_json::Value| -> Vec<(String, HeaderValue)> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let value = crate::topology::header_value_from_json(k, v).unwrap();
                    (k.clone(), value)
                })
                .collect()
        };
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 100, "{} cases", cases.len());
        for case in cases {
            let (args, headers) = (table(&case["arguments"]), table(&case["headers"]));
            let got = HeadersFilter::parse(&args)
                .unwrap()
                .matches(&MessageHeaders::new(&headers));
            assert_eq!(got, case["matches"].as_bool().unwrap(), "{case}");
        }
    }

    #[test]
    fn a_void_argument_asks_only_for_presence() {
        let args = [("k", HeaderValue::Void)];
        assert!(matches(&args, &[("k", s("anything"))]));
        assert!(matches(&args, &[("k", HeaderValue::Void)]));
        assert!(!matches(&args, &[("other", HeaderValue::Void)]));
        // A void header matches only a void (presence) argument.
        assert!(!matches(&[("k", s(""))], &[("k", HeaderValue::Void)]));
        let any = [
            ("x-match", s("any")),
            ("a", HeaderValue::Void),
            ("b", s("x")),
        ];
        assert!(matches(&any, &[("a", HeaderValue::Int(3))]));
    }

    #[test]
    fn empty_arguments_all_matches_everything_any_nothing() {
        assert!(matches(&[], &[]));
        assert!(matches(&[], &[("a", s("b"))]));
        assert!(matches(&[("x-match", s("all"))], &[("a", s("b"))]));
        assert!(!matches(&[("x-match", s("any"))], &[("a", s("b"))]));
        // x- arguments do not count without -with-x, so this is still "nothing to compare".
        assert!(!matches(
            &[("x-match", s("any")), ("x-a", s("1"))],
            &[("x-a", s("1"))]
        ));
        assert!(matches(&[("x-a", s("1"))], &[]));
    }

    #[test]
    fn x_arguments_count_only_with_x() {
        let all = [
            ("x-match", s("all")),
            ("x-tenant", s("t1")),
            ("kind", s("k")),
        ];
        assert!(matches(&all, &[("kind", s("k"))]));
        let all_x = [
            ("x-match", s("all-with-x")),
            ("x-tenant", s("t1")),
            ("kind", s("k")),
        ];
        assert!(!matches(&all_x, &[("kind", s("k"))]));
        assert!(matches(&all_x, &[("kind", s("k")), ("x-tenant", s("t1"))]));
        let any_x = [("x-match", s("any-with-x")), ("x-tenant", s("t1"))];
        assert!(matches(&any_x, &[("x-tenant", s("t1"))]));
        assert!(!matches(&any_x, &[("x-tenant", s("t2"))]));
        // x-match itself is never compared, even in -with-x mode.
        assert!(matches(&[("x-match", s("all-with-x"))], &[]));
    }

    #[test]
    fn a_repeated_header_key_keeps_its_first_value() {
        let args = [("k", s("first"))];
        assert!(matches(&args, &[("k", s("first")), ("k", s("second"))]));
        assert!(!matches(&args, &[("k", s("second")), ("k", s("first"))]));
        // And the entries around the repeated key are still found.
        let around = [("a", s("1")), ("k", s("first")), ("z", s("2"))];
        assert!(matches(
            &around,
            &[
                ("z", s("2")),
                ("k", s("first")),
                ("k", s("second")),
                ("a", s("1"))
            ]
        ));
    }

    #[test]
    fn arguments_and_headers_in_any_order_match() {
        let args = [("c", s("3")), ("a", s("1")), ("b", s("2"))];
        assert!(matches(
            &args,
            &[("b", s("2")), ("c", s("3")), ("a", s("1"))]
        ));
        assert!(matches(
            &args,
            &[("z", s("0")), ("c", s("3")), ("b", s("2")), ("a", s("1"))]
        ));
        assert!(!matches(&args, &[("c", s("3")), ("a", s("1"))]));
    }

    #[test]
    fn headers_are_sorted_once_and_only_when_a_binding_needs_them() {
        let given = h(&[("b", s("2")), ("a", s("1"))]);
        let headers = MessageHeaders::new(&given);
        assert!(headers.sorted.get().is_none());
        let filter = HeadersFilter::parse(&h(&[("a", s("1"))])).unwrap();
        assert!(filter.matches(&headers));
        let first = headers.sorted().as_ptr();
        assert!(filter.matches(&headers));
        assert_eq!(headers.sorted().as_ptr(), first);
    }

    #[test]
    fn header_tables_over_the_limits_are_refused() {
        let limits = HeaderLimits::default();
        assert_eq!(limits.check_count(MAX_HEADER_ENTRIES), Ok(()));
        assert_eq!(
            limits.check_count(MAX_HEADER_ENTRIES + 1),
            Err(HeaderLimitError::TooManyEntries {
                count: MAX_HEADER_ENTRIES + 1,
                limit: MAX_HEADER_ENTRIES,
            })
        );
        assert_eq!(limits.check_len(MAX_HEADERS_LEN), Ok(()));
        assert_eq!(
            limits.check_len(MAX_HEADERS_LEN + 1),
            Err(HeaderLimitError::TooLong {
                len: MAX_HEADERS_LEN + 1,
                limit: MAX_HEADERS_LEN,
            })
        );
        let many: Vec<_> = (0..=MAX_HEADER_ENTRIES)
            .map(|i| (format!("k{i}"), HeaderValue::Bool(true)))
            .collect();
        assert!(matches!(
            limits.check(&many),
            Err(HeaderLimitError::TooManyEntries { .. })
        ));
        assert_eq!(limits.check(&many[1..]), Ok(()));
        let long = vec![("k".to_owned(), s(&"v".repeat(MAX_HEADERS_LEN)))];
        assert!(matches!(
            limits.check(&long),
            Err(HeaderLimitError::TooLong { .. })
        ));
    }

    #[test]
    fn configured_header_limits_replace_the_defaults() {
        let limits = HeaderLimits {
            max_entries: 2,
            max_bytes: 100,
        };
        let three = h(&[("a", s("1")), ("b", s("2")), ("c", s("3"))]);
        let e = limits.check(&three).unwrap_err();
        assert_eq!(
            e.to_string(),
            "3 header entries exceed the limit of 2 (max_header_entries)"
        );
        assert!(limits.check(&three[1..]).is_ok());
        let long = h(&[("a", s(&"v".repeat(100)))]);
        assert!(matches!(
            limits.check(&long),
            Err(HeaderLimitError::TooLong { limit: 100, .. })
        ));
    }

    #[test]
    fn invalid_x_match_is_refused() {
        assert!(HeadersFilter::parse(&h(&[("x-match", s("some"))])).is_err());
        let e = HeadersFilter::parse(&h(&[("x-match", HeaderValue::Int(1))])).unwrap_err();
        assert_eq!(e, "x-match must be a string, not a value of type integer");
    }

    mod merge_vs_naive {
        use super::*;
        use proptest::prelude::*;

        /// Few keys, so that arguments and headers often share them; `x-` ones included.
        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["a", "b", "c", "d", "x-a", "x-b", "", "ab"])
                .prop_map(str::to_owned)
        }

        fn value() -> impl Strategy<Value = HeaderValue> {
            prop_oneof![
                (0i64..3).prop_map(HeaderValue::Int),
                prop::sample::select(vec!["0", "1", "2"]).prop_map(s),
                any::<bool>().prop_map(HeaderValue::Bool),
                prop::sample::select(vec![&b"1"[..], b"2"])
                    .prop_map(|v| HeaderValue::Bytes(Bytes::from_static(v))),
                (0i64..3).prop_map(|v| HeaderValue::Float(v as f64)),
                Just(HeaderValue::Void),
            ]
        }

        fn table(max: usize) -> impl Strategy<Value = Vec<(String, HeaderValue)>> {
            prop::collection::vec((key(), value()), 0..max)
        }

        fn mode() -> impl Strategy<Value = Option<&'static str>> {
            prop::option::of(prop::sample::select(vec![
                "all",
                "any",
                "all-with-x",
                "any-with-x",
            ]))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn merge_agrees_with_a_linear_find_per_argument(
                mode in mode(),
                mut args in table(6),
                headers in table(10),
                at in 0usize..7,
            ) {
                if let Some(mode) = mode {
                    args.insert(at.min(args.len()), (X_MATCH.to_owned(), s(mode)));
                }
                let filter = HeadersFilter::parse(&args).unwrap();
                prop_assert_eq!(
                    filter.matches(&MessageHeaders::new(&headers)),
                    naive_matches(&args, &headers),
                    "args {:?} headers {:?}", args, headers
                );
            }
        }
    }
}
