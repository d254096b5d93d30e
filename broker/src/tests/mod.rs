//! Tests that need the whole broker in this process (fault injection).

mod faults;
