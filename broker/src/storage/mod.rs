//! The storage engine (in progress).
