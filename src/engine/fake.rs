//! A scripted engine for unit tests.
