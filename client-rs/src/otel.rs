//! The `opentelemetry` feature: messages carry the publishing span's W3C trace context
//! (protocol.md §8.1, meta properties 11 and 12), taken from and given back as OpenTelemetry
//! [`Context`]s. Only the API crate is used: the application chooses its SDK and exporter,
//! and without an installed tracer there is no valid span, so nothing is added.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

use crate::wire::{Properties, TraceParent};

/// `properties` with the current context's span as their trace context, when they have none
/// and a valid span is current; `None` when there is nothing to add (the caller then sends
/// its properties as they are, without a copy).
pub(crate) fn with_current_span(properties: &Properties) -> Option<Properties> {
    if properties.trace_parent.is_some() {
        return None;
    }
    let cx = Context::current();
    let (trace_parent, trace_state) = from_span_context(cx.span().span_context())?;
    let mut properties = properties.clone();
    properties.trace_parent = Some(trace_parent);
    if properties.trace_state.is_none() {
        properties.trace_state = trace_state;
    }
    Some(properties)
}

/// The trace parent (and non-empty trace state) of a valid span context.
fn from_span_context(span: &SpanContext) -> Option<(TraceParent, Option<String>)> {
    if !span.is_valid() {
        return None;
    }
    let trace_parent = TraceParent::new(
        span.trace_id().to_bytes(),
        span.span_id().to_bytes(),
        span.trace_flags().to_u8(),
    )?;
    let state = span.trace_state().header();
    Some((trace_parent, (!state.is_empty()).then_some(state)))
}

/// A context whose span is the remote publisher's: a worker's span started in it is a child
/// of the publishing span. A trace state that does not parse is left out rather than failing
/// the delivery.
pub(crate) fn remote_context(trace_parent: TraceParent, trace_state: Option<&str>) -> Context {
    let state = trace_state
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let span = SpanContext::new(
        TraceId::from_bytes(trace_parent.trace_id),
        SpanId::from_bytes(trace_parent.span_id),
        TraceFlags::new(trace_parent.flags),
        true,
        state,
    );
    Context::new().with_remote_span_context(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: [u8; 16] = [0x4b; 16];
    const SPAN: [u8; 8] = [0x7a; 8];

    fn span_context(state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(TRACE),
            SpanId::from_bytes(SPAN),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_str(state).unwrap(),
        )
    }

    #[test]
    fn the_current_span_is_injected_when_the_message_has_no_trace_parent() {
        let cx = Context::new().with_remote_span_context(span_context("vendor=1"));
        let _attached = cx.attach();
        let props = with_current_span(&Properties::default()).expect("a span is current");
        let tp = props.trace_parent.unwrap();
        assert_eq!((tp.trace_id, tp.span_id), (TRACE, SPAN));
        assert!(tp.sampled());
        assert_eq!(props.trace_state.as_deref(), Some("vendor=1"));
    }

    #[test]
    fn a_trace_parent_set_by_hand_wins() {
        let cx = Context::new().with_remote_span_context(span_context(""));
        let _attached = cx.attach();
        let own = TraceParent::new([1; 16], [2; 8], 0).unwrap();
        let props = Properties {
            trace_parent: Some(own),
            ..Properties::default()
        };
        assert!(with_current_span(&props).is_none());
    }

    #[test]
    fn nothing_is_injected_without_a_valid_span() {
        assert!(with_current_span(&Properties::default()).is_none());
        let cx = Context::new().with_remote_span_context(SpanContext::empty_context());
        let _attached = cx.attach();
        assert!(with_current_span(&Properties::default()).is_none());
    }

    #[test]
    fn an_empty_trace_state_is_left_out_and_one_set_by_hand_kept() {
        let cx = Context::new().with_remote_span_context(span_context("vendor=1"));
        let attached = cx.attach();
        let props = Properties {
            trace_state: Some("mine=2".into()),
            ..Properties::default()
        };
        let props = with_current_span(&props).unwrap();
        assert_eq!(props.trace_state.as_deref(), Some("mine=2"));
        drop(attached);
        let cx = Context::new().with_remote_span_context(span_context(""));
        let _attached = cx.attach();
        let props = with_current_span(&Properties::default()).unwrap();
        assert_eq!(props.trace_state, None);
    }

    #[test]
    fn a_delivery_gives_back_a_remote_parent() {
        let tp = TraceParent::new(TRACE, SPAN, 1).unwrap();
        let cx = remote_context(tp, Some("vendor=1"));
        let span = cx.span().span_context().clone();
        assert!(span.is_remote() && span.is_sampled());
        assert_eq!(span.trace_id().to_bytes(), TRACE);
        assert_eq!(span.span_id().to_bytes(), SPAN);
        assert_eq!(span.trace_state().get("vendor"), Some("1"));
        // a trace state that does not parse is dropped, the parent kept
        let cx = remote_context(tp, Some("not a list member"));
        assert_eq!(cx.span().span_context().trace_state().header(), "");
        assert!(cx.has_active_span());
    }
}
