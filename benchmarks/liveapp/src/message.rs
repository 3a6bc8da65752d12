//! The page's text, alone in its file so that a test (or a person trying rbd's run
//! mode) edits one line and sees the page change without reloading it by hand.

pub const MESSAGE: &str = "Hello from rbd's live app";
