//! The drive commands (see [`super::device`]).
