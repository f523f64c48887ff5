//! Compile-fail and compile-pass cases live in `tests/`; this crate holds nothing else.
