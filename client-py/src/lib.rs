//! Python bindings for the Sluice client. The bindings themselves arrive with the Python
//! client work; this crate is a workspace member so that they build with everything else.
