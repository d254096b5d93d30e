//! Exchanges, bindings and routing (filled in by the routing work).
