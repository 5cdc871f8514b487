//! Helpers for the end-to-end tests: locate built binaries, start them in temp dirs, wait for conditions.
