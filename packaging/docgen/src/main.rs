//! mcplexer-docgen: writes the man pages and shell completions of
//! mcplexer-vaultd, mcplexerctl and mcplexer-proxy from their own clap
//! definitions, for the Debian package (`packaging/debian/build-deb`).
//!
//! Usage: `mcplexer-docgen OUT_DIR` (OUT_DIR must not exist or be empty).
//!
//! Layout written: `man1/*.1` and `man8/*.8`, one page per command and
//! subcommand (`mcplexerctl-scope-create.1`, ...); `bash-completion/NAME`,
//! `zsh/_NAME`, `fish/NAME.fish`: the names each shell's vendor directory
//! expects.
//!
//! The vault and the proxy export their command lines from their libraries;
//! mcplexerctl is a binary-only crate, so its `cli.rs` (and the `time.rs`
//! it uses) are compiled in here from its sources. Every page and
//! completion is derived from those definitions: a new subcommand gets its
//! own without a change here.

use std::io;
use std::path::Path;
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::aot::{Shell, generate};
use clap_mangen::Man;

// Only `Since` and `parse_since` are used, by the command line.
#[allow(dead_code)]
#[path = "../../../ctl/src/time.rs"]
mod time;

// The parsed values are read by mcplexerctl, never here.
#[allow(dead_code)]
#[path = "../../../ctl/src/cli.rs"]
mod ctl_cli;

/// The `.TH` source field of every page.
const SOURCE: &str = concat!("MCPlexer ", env!("CARGO_PKG_VERSION"));
/// The `.TH` manual field of every page.
const MANUAL: &str = "MCPlexer Manual";

/// Appended to mcplexer-vaultd(8): what the page of a daemon is read for
/// and the flags alone do not say.
const VAULTD_EXTRA: &str = r#".SH FILES
.TP
.I /etc/mcplexer/config.yaml
The declarative configuration, applied at each start in system mode. Its
objects have \fBsource: yaml\fR and are removed when they leave the file.
.TP
.I /var/lib/mcplexer
The state directory: the age identity (\fIidentity.txt\fR), the encrypted
database (\fIvault.db\fR) and the audit journal. Mode 0700, owned by the
vault's user \fBmcplexer\fR; the vault refuses to start otherwise.
.TP
.I /run/mcplexer/vault.sock
The socket, made by \fBmcplexer\-vaultd.socket\fR: mode 0660, group
\fBmcplexer\fR. Members of \fBmcplexer\fR may connect; root and members of
\fBmcplexer\-admin\fR administer.
.SH SEE ALSO
.BR mcplexerctl (1),
.BR mcplexer\-proxy (1),
.BR systemd.socket (5),
.BR sysusers.d (5),
.BR tmpfiles.d (5)
"#;

/// Appended to mcplexerctl(1).
const CTL_EXTRA: &str = r".SH SEE ALSO
.BR mcplexer\-vaultd (8),
.BR mcplexer\-proxy (1)
";

/// Appended to mcplexer-proxy(1).
const PROXY_EXTRA: &str = r".SH SEE ALSO
.BR mcplexerctl (1),
.BR mcplexer\-vaultd (8)
";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: mcplexer-docgen OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(&out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mcplexer-docgen: {err}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &Path) -> io::Result<()> {
    // Pages of subcommands that no longer exist must not linger into the
    // package, so the directory starts empty.
    if out
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        return Err(io::Error::other(format!(
            "{} is not empty; remove it first",
            out.display()
        )));
    }
    for dir in ["man1", "man8", "bash-completion", "zsh", "fish"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    let date = page_date()?;
    let commands = [
        (mcplexer_vaultd::cli::Cli::command(), "8", VAULTD_EXTRA),
        (ctl_cli::Cli::command(), "1", CTL_EXTRA),
        (mcplexer_proxy::cli::Cli::command(), "1", PROXY_EXTRA),
    ];
    for (cmd, section, extra) in commands {
        completions(cmd.clone(), out)?;
        // `help` is a subcommand for the command line, not a page.
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        let dir = out.join(format!("man{section}"));
        man_pages(&cmd, section, &date, Some(extra), &dir)?;
    }
    Ok(())
}

/// Writes the page of `cmd` (built) and of each visible subcommand, in
/// `section`; `extra` (roff) is appended to the page of `cmd` itself.
fn man_pages(
    cmd: &Command,
    section: &str,
    date: &str,
    extra: Option<&str>,
    dir: &Path,
) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, section, date, None, dir)?;
    }
    let man = Man::new(cmd.clone())
        .section(section)
        .date(date)
        .source(SOURCE)
        .manual(MANUAL);
    let mut page = Vec::new();
    man.render(&mut page)?;
    if let Some(extra) = extra {
        page.extend_from_slice(extra.as_bytes());
    }
    std::fs::write(dir.join(man.get_filename()), page)
}

/// The `.TH` date of the pages, `YYYY-MM-DD`: from `SOURCE_DATE_EPOCH`
/// when set (reproducible builds; build-deb sets it to the last commit's
/// time), else today (UTC).
fn page_date() -> io::Result<String> {
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value.trim().parse::<u64>().map_err(|_| {
            io::Error::other(format!("SOURCE_DATE_EPOCH {value:?} is not unix seconds"))
        })?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(io::Error::other)?
            .as_secs(),
    };
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
    // civil_from_days), to need no date crate for one line of roff.
    let days = secs / 86_400 + 719_468;
    let era = days / 146_097;
    let doe = days % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    Ok(format!("{year:04}-{month:02}-{day:02}"))
}

/// Writes the bash, zsh and fish completions of `cmd`.
fn completions(mut cmd: Command, out: &Path) -> io::Result<()> {
    let name = cmd.get_name().to_owned();
    for (shell, path) in [
        (Shell::Bash, out.join("bash-completion").join(&name)),
        (Shell::Zsh, out.join("zsh").join(format!("_{name}"))),
        (Shell::Fish, out.join("fish").join(format!("{name}.fish"))),
    ] {
        let mut script = Vec::new();
        generate(shell, &mut cmd, &name, &mut script);
        std::fs::write(path, script)?;
    }
    Ok(())
}
