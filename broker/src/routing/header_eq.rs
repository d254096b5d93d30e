//! Header values compared the way RabbitMQ's headers exchange compares them.
//!
//! RabbitMQ (`rabbit_exchange_type_headers:headers_match/5`) decodes a field into a
//! `{Key, Type, Value}` triple and compares a binding argument with a header by
//! `PValue == DValue`: Erlang's arithmetic equality on the values alone, the types ignored.
//! What that means for each Sluice type follows from how RabbitMQ decodes it
//! (`rabbit_binary_parser`):
//! - string and bytes are both Erlang binaries: equal when their bytes are;
//! - integer and timestamp are integers, float is a float: numbers are equal when they are
//!   mathematically equal (`1 == 1.0`, and `0.0 == -0.0`), never equal to anything else;
//! - boolean is an atom: equal only to the same boolean;
//! - decimal is the pair `{scale, value}`: equal only to a decimal with the same scale and
//!   value (`1.0` as scale 1 value 10 differs from `1` as scale 0 value 1);
//! - array is a list of `{Type, Value}` and table a list of `{Key, Type, Value}`, so inside
//!   them types count ([`tagged_eq`]) and tables compare entry by entry in order; an empty
//!   array and an empty table are both the empty list, hence equal.
//!
//! A void argument is handled before any comparison: it asks only that the key be present.

use sluice_client::wire::HeaderValue;

/// Whether a binding argument's value equals a message header's value, at the top level of
/// the tables (types ignored, as RabbitMQ's `==`).
pub(super) fn values_equal(argument: &HeaderValue, header: &HeaderValue) -> bool {
    use HeaderValue as V;
    match (argument, header) {
        (V::Str(a), V::Str(b)) => a == b,
        (V::Bytes(a), V::Bytes(b)) => a == b,
        (V::Str(s), V::Bytes(b)) | (V::Bytes(b), V::Str(s)) => s.as_bytes() == &b[..],
        (V::Bool(a), V::Bool(b)) => a == b,
        (V::Void, V::Void) => true,
        (V::Decimal(a), V::Decimal(b)) => a == b,
        (V::Array(a), V::Array(b)) => lists_equal(a, b),
        (V::Table(a), V::Table(b)) => tables_equal(a, b),
        (V::Array(a), V::Table(b)) | (V::Table(b), V::Array(a)) => a.is_empty() && b.is_empty(),
        _ => match (Number::of(argument), Number::of(header)) {
            (Some(a), Some(b)) => a.equals(b),
            _ => false,
        },
    }
}

/// Inside an array or table, where RabbitMQ compares `{Type, Value}` tuples: the types must
/// be the same, then the values compare with `==` (so floats `0.0` and `-0.0` are equal).
fn tagged_eq(a: &HeaderValue, b: &HeaderValue) -> bool {
    use HeaderValue as V;
    match (a, b) {
        (V::Float(x), V::Float(y)) => x == y,
        (V::Array(x), V::Array(y)) => lists_equal(x, y),
        (V::Table(x), V::Table(y)) => tables_equal(x, y),
        _ => a == b,
    }
}

fn lists_equal(a: &[HeaderValue], b: &[HeaderValue]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| tagged_eq(x, y))
}

/// Tables compare in their order: RabbitMQ sorts only the top-level tables by key.
fn tables_equal(a: &[(String, HeaderValue)], b: &[(String, HeaderValue)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && tagged_eq(va, vb))
}

/// A header value that Erlang holds as a number.
#[derive(Clone, Copy)]
enum Number {
    /// Integers and timestamps; i128 holds both i64 and u64.
    Integer(i128),
    Float(f64),
}

impl Number {
    fn of(value: &HeaderValue) -> Option<Self> {
        match value {
            HeaderValue::Int(i) => Some(Self::Integer(i128::from(*i))),
            HeaderValue::Timestamp(t) => Some(Self::Integer(i128::from(*t))),
            HeaderValue::Float(f) => Some(Self::Float(*f)),
            _ => None,
        }
    }

    /// Exact mathematical equality, as Erlang's `==` between an integer and a float.
    fn equals(self, other: Self) -> bool {
        match (self, other) {
            (Self::Integer(a), Self::Integer(b)) => a == b,
            (Self::Float(a), Self::Float(b)) => a == b,
            (Self::Integer(i), Self::Float(f)) | (Self::Float(f), Self::Integer(i)) => {
                // A float outside i128's range saturates to a value no i64 or u64 has.
                f.is_finite() && f.fract() == 0.0 && f as i128 == i
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_client::wire::Decimal;

    use HeaderValue as V;

    #[test]
    fn numbers_compare_by_value_whatever_their_type() {
        assert!(values_equal(&V::Int(1), &V::Float(1.0)));
        assert!(values_equal(&V::Float(-0.0), &V::Int(0)));
        assert!(values_equal(&V::Float(0.0), &V::Float(-0.0)));
        assert!(values_equal(&V::Timestamp(5), &V::Int(5)));
        assert!(values_equal(&V::Timestamp(5), &V::Float(5.0)));
        assert!(!values_equal(&V::Int(1), &V::Float(1.5)));
        // 2^53 + 1 has no f64: the nearest float is not equal to it.
        assert!(!values_equal(
            &V::Int((1 << 53) + 1),
            &V::Float(((1u64 << 53) + 1) as f64)
        ));
        assert!(values_equal(
            &V::Int(1 << 53),
            &V::Float((1u64 << 53) as f64)
        ));
        assert!(!values_equal(&V::Int(i64::MAX), &V::Float(1e300)));
        assert!(!values_equal(&V::Timestamp(u64::MAX), &V::Int(-1)));
    }

    #[test]
    fn strings_and_bytes_are_both_binaries() {
        let bytes = V::Bytes(Bytes::from_static(b"abc"));
        assert!(values_equal(&V::from("abc"), &bytes));
        assert!(values_equal(&bytes, &V::from("abc")));
        assert!(!values_equal(&V::from("1"), &V::Int(1)));
        assert!(!values_equal(&V::Bool(true), &V::Int(1)));
    }

    #[test]
    fn decimals_compare_scale_and_value() {
        let d = |scale, value| V::Decimal(Decimal { scale, value });
        assert!(values_equal(&d(1, 10), &d(1, 10)));
        assert!(!values_equal(&d(1, 10), &d(0, 1)));
        assert!(!values_equal(&d(0, 1), &V::Int(1)));
    }

    #[test]
    fn inside_arrays_and_tables_types_count_and_order_counts() {
        let arr = |v: Vec<HeaderValue>| V::Array(v);
        assert!(values_equal(
            &arr(vec![V::Int(1), V::from("a")]),
            &arr(vec![V::Int(1), V::from("a")])
        ));
        assert!(!values_equal(
            &arr(vec![V::Int(1)]),
            &arr(vec![V::Float(1.0)])
        ));
        assert!(!values_equal(
            &arr(vec![V::from("a")]),
            &arr(vec![V::Bytes(Bytes::from_static(b"a"))])
        ));
        assert!(values_equal(
            &arr(vec![V::Float(0.0)]),
            &arr(vec![V::Float(-0.0)])
        ));
        let t = |pairs: &[(&str, HeaderValue)]| {
            V::Table(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            )
        };
        let ab = t(&[("a", V::Int(1)), ("b", V::Int(2))]);
        assert!(values_equal(&ab, &ab.clone()));
        assert!(!values_equal(
            &ab,
            &t(&[("b", V::Int(2)), ("a", V::Int(1))])
        ));
        assert!(values_equal(&arr(vec![]), &t(&[])));
        assert!(!values_equal(&arr(vec![V::Void]), &t(&[("a", V::Void)])));
    }
}
