//! Headers exchanges: binding arguments compared with message headers under `x-match`.

use sluice_client::wire::HeaderValue;

/// The binding argument that selects the matching mode; never compared itself.
const X_MATCH: &str = "x-match";

/// One headers binding's arguments, parsed once at bind time.
#[derive(Debug, Clone)]
pub(super) struct HeadersFilter {
    /// `any` instead of `all`.
    any: bool,
    /// The arguments that take part in matching (`x-` ones only in the `-with-x` modes).
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
            Some((_, other)) => return Err(format!("x-match must be a string, not {other:?}")),
        };
        let args = arguments
            .iter()
            .filter(|(k, _)| k != X_MATCH && (with_x || !k.starts_with("x-")))
            .cloned()
            .collect();
        Ok(Self { any, args })
    }

    /// Whether a message with these headers matches.
    pub(super) fn matches(&self, headers: &[(String, HeaderValue)]) -> bool {
        // Values must agree in type as well as content: Int(1) is not Str("1").
        let has = |(key, value): &(String, HeaderValue)| {
            headers
                .iter()
                .find(|(k, _)| k == key)
                .is_some_and(|(_, v)| v == value)
        };
        if self.any {
            self.args.iter().any(has)
        } else {
            self.args.iter().all(has)
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
        HeadersFilter::parse(&h(args)).unwrap().matches(&h(headers))
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
    fn types_must_match() {
        let bytes = HeaderValue::Bytes(Bytes::from_static(b"1"));
        assert!(!matches(&[("k", HeaderValue::Int(1))], &[("k", s("1"))]));
        assert!(!matches(&[("k", s("1"))], &[("k", bytes.clone())]));
        assert!(!matches(
            &[("k", HeaderValue::Bool(true))],
            &[("k", HeaderValue::Int(1))]
        ));
        assert!(matches(&[("k", bytes.clone())], &[("k", bytes)]));
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
    fn invalid_x_match_is_refused() {
        assert!(HeadersFilter::parse(&h(&[("x-match", s("some"))])).is_err());
        assert!(HeadersFilter::parse(&h(&[("x-match", HeaderValue::Int(1))])).is_err());
    }
}
