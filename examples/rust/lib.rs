//! Nothing here: the examples are the `[[example]]` targets of this crate.
