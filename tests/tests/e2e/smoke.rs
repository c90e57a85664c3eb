//! The daemon starts, answers status and stops cleanly on SIGTERM.

use mcplexer_tests::Vault;

#[test]
fn starts_answers_and_stops_on_sigterm() {
    let mut vault = Vault::start();
    let status = vault.ctl(["--json", "status"]).json();
    assert_eq!(status["mode"], "user");
    assert_eq!(status["caller_role"], "admin");
    assert_eq!(vault.stop(), Some(0));
    assert!(!vault.socket.exists(), "socket removed on shutdown");
}
