//! The daemon starts, answers status and stops cleanly on SIGTERM; its log
//! to a file has no terminal colours.

use mcplexer_tests::Vault;

#[test]
fn starts_answers_and_stops_on_sigterm() {
    let mut vault = Vault::start();
    let status = vault.ctl(["--json", "status"]).json();
    assert_eq!(status["mode"], "user");
    assert_eq!(status["caller_role"], "admin");
    assert_eq!(vault.stop(), Some(0));
    assert!(!vault.socket.exists(), "socket removed on shutdown");
    // Its stderr is a file here: plain text, no terminal colours.
    let log = vault.log();
    assert!(log.contains("vault ready"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "terminal escapes in a log file: {log:?}"
    );
}
