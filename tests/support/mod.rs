//! Helpers shared by integration test files (each test file is its own crate:
//! `mod support;` includes these where needed).

pub mod groups;
