//! The I/O completion port backend (Windows): not written yet; `auto` uses `poll`.
