//! The interactive REPL on a real pseudo-terminal (expectrl): prompt, output, a bad command,
//! Tab completion of a command word and of a seen job id, Up-arrow history, quit, and the
//! history file kept across sessions.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use expectrl::process::unix::WaitStatus;
use expectrl::session::OsSession as Session;
use expectrl::{Eof, Expect};

const UP: &str = "\x1b[A";

/// `sandwarden admin` on a pseudo-terminal.
fn spawn(base: &str, history: &Path) -> Session {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandwarden"));
    cmd.args([
        "admin",
        "--url",
        base,
        "--token",
        super::fake::TOKEN,
        "--history",
        history.to_str().unwrap(),
    ])
    .env("TERM", "xterm");
    let mut s = Session::spawn(cmd).expect("repl starts on a pty");
    s.set_expect_timeout(Some(Duration::from_secs(20)));
    s
}

/// Wait for `needle`; returns what the terminal showed before it (and the needle).
fn expect(s: &mut Session, needle: &str) -> String {
    let c = s
        .expect(needle)
        .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"));
    format!("{}{needle}", String::from_utf8_lossy(c.before()))
}

#[tokio::test(flavor = "multi_thread")]
async fn interactive_repl_on_a_pty() {
    let base = super::fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let hist = history.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = spawn(&base, &hist);
        expect(&mut s, "sandwarden> ");

        // A command and its table.
        s.send("jobs\r").unwrap();
        let screen = expect(&mut s, "sandwarden> ");
        assert!(screen.contains("job-dead-1  dead"), "{screen:?}");

        // A bad command: one error line, and the loop goes on.
        s.send("bogus thing\r").unwrap();
        let screen = expect(&mut s, "sandwarden> ");
        assert!(
            screen.contains("error: unknown command \"bogus\"; type `help` for the list\r\n"),
            "{screen:?}"
        );

        // Tab completes a command word.
        s.send("brea\t").unwrap();
        expect(&mut s, "breaker ");
        s.send("\r").unwrap();
        let screen = expect(&mut s, "sandwarden> ");
        assert!(screen.contains("breaker (local): closed"), "{screen:?}");

        // Tab completes a job id seen in the `jobs` output.
        s.send("job show job-de\t").unwrap();
        expect(&mut s, "job-dead-1 ");
        s.send("\r").unwrap();
        let screen = expect(&mut s, "sandwarden> ");
        assert!(screen.contains("\"status\": \"dead\""), "{screen:?}");

        // Up-arrow recalls the last command; Enter runs it again.
        s.send(UP).unwrap();
        expect(&mut s, "job show job-dead-1");
        s.send("\r").unwrap();
        let screen = expect(&mut s, "sandwarden> ");
        assert!(screen.contains("\"id\": \"job-dead-1\""), "{screen:?}");

        s.send("quit\r").unwrap();
        s.expect(Eof).unwrap();
        let status = s.get_process().wait().unwrap();
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");

        // A new session recalls the previous session's history; Ctrl-D leaves.
        let mut s = spawn(&base, &hist);
        expect(&mut s, "sandwarden> ");
        s.send(UP).unwrap();
        expect(&mut s, "quit");
        s.send(UP).unwrap();
        expect(&mut s, "job show job-dead-1");
        s.send("\x15\x04").unwrap(); // Ctrl-U clears the line, Ctrl-D on an empty line exits.
        s.expect(Eof).unwrap();
        let status = s.get_process().wait().unwrap();
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    })
    .await
    .unwrap();

    let text = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for cmd in [
        "jobs",
        "bogus thing",
        "breaker",
        "job show job-dead-1",
        "quit",
    ] {
        assert!(lines.contains(&cmd), "history lacks {cmd:?}: {text:?}");
    }
}
