//! `cli::repl::parse` and `cli::repl::complete` on arbitrary lines.
//!
//! Parsing never panics, is blind to how words are spaced, and every refusal says something.
//! Completion at any cursor position on a character boundary (what the line editor passes)
//! never panics and offers only words that extend the one under the cursor.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use sandwarden::cli::repl::{Command, complete, parse};

fuzz_target!(|line: &str| {
    let parsed = parse(line);
    let spaced = line.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        parsed,
        parse(&spaced),
        "spacing changed the meaning of {line:?}"
    );
    match &parsed {
        Err(msg) => assert!(!msg.is_empty()),
        Ok(Command::FaultsSet(f)) => {
            let body = f.body();
            assert_eq!(body["enabled"], true);
        }
        Ok(_) => {}
    }

    let ids = BTreeSet::from(["job-0000000000000001".to_string()]);
    for (pos, _) in line.char_indices().chain([(line.len(), ' ')]).take(64) {
        let (start, candidates) = complete(line, pos, &ids);
        assert!(start <= pos, "completion starts after the cursor");
        let word = &line[start..pos];
        assert!(!word.contains(char::is_whitespace), "{word:?}");
        for c in &candidates {
            assert!(c.starts_with(word), "{c:?} does not extend {word:?}");
        }
    }
});
