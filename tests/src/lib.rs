//! End-to-end test harness (added with the tests).
