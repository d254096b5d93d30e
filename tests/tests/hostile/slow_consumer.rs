//! Placeholder; filled by the issue #10 work.
