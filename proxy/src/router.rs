//! Routing: which route rule decides a tool call, and so which downstream
//! server and auth scope serve it (DESIGN §4).
//!
//! A [`RouteTable`] is built from one [`RoutingConfig`] of the vault (and
//! rebuilt when the configuration generation moves); it then tells which
//! workspaces contain a directory and what happens to one call.
//!
//! Trust: the rules come from the vault. From the MCP client this module takes
//! nothing but the directory the caller hands it (the proxy's cwd for stdio,
//! the declared root for HTTP clients), which only selects the rules that
//! apply. The vault decides, from this proxy's uid, whether a rule's scope is
//! released, so a client claiming another directory gains no credential.
//!
//! * The workspace chain: every workspace whose root is a path-boundary
//!   ancestor of (or equal to) the directory, most path components first, ties
//!   by id. `/srv/app` contains `/srv/app/x` but not `/srv/apple`; trailing
//!   slashes do not matter; `~` in a root is the proxy user's home.
//! * Within a workspace every `tool_match` glob of every rule is ranked: exact
//!   names, then prefix globs (`lit*`, longer literal first), then other globs
//!   (longer literal prefix first), then `*`; then by the rule's `priority`
//!   (higher first), then by rule id. A rule with several globs thus ranks by
//!   the most specific of its globs that matches the tool.
//! * The first match decides. `deny` denies whatever server the tool belongs
//!   to. `allow` routes to the rule's server with its scope, and only matches
//!   that server's tools: an allow rule for another server is passed over.
//! * No match in the whole chain is [`Decision::NoMatch`], which callers must
//!   refuse (fail closed). A workspace's `default_policy` never turns a
//!   no-match into an allow: without a rule there is no server or scope to
//!   route the call to.
//! * A configuration problem (bad glob or root, `~` without a home, rule for
//!   an unknown workspace) skips the rule or workspace; an unknown policy is
//!   read as `deny`. Each is reported by [`RouteTable::problems`].

use std::cmp::Reverse;
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use mcplexer_proto::v1::{RouteRule, RoutingConfig, Workspace};

/// Id of the built-in workspace that always exists, rooted at `/`.
pub const DEFAULT_WORKSPACE: &str = "default";

/// Characters that make a `tool_match` entry a glob rather than a name.
const GLOB_META: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// Splits an exposed tool name at the first `__` into (namespace, tool);
/// `None` when there is no `__` or either part is empty.
pub fn split_tool(name: &str) -> Option<(&str, &str)> {
    name.split_once("__")
        .filter(|(ns, tool)| !ns.is_empty() && !tool.is_empty())
}

/// What a route table decided for one tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Route the call to `server_id`, injecting `scope_id` if there is one.
    Allow {
        /// Workspace of the deciding rule.
        workspace_id: String,
        /// The deciding rule.
        rule_id: String,
        /// The downstream server to send the call to.
        server_id: String,
        /// The auth scope to ask the vault for; `None` for no credential.
        scope_id: Option<String>,
    },
    /// Refuse the call: a deny rule matched.
    Deny {
        /// Workspace of the deciding rule.
        workspace_id: String,
        /// The deciding rule.
        rule_id: String,
    },
    /// Refuse the call: no rule matched in any workspace of the chain.
    NoMatch {
        /// The workspaces searched, most specific first (empty when none
        /// contains the directory).
        workspaces: Vec<String>,
    },
}

impl Decision {
    /// Whether the call may go ahead.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// One line a person can read: which rule in which workspace decided, or
    /// which workspaces were searched in vain.
    pub fn explain(&self) -> String {
        match self {
            Decision::Allow {
                workspace_id: ws,
                rule_id: rule,
                server_id: server,
                scope_id,
            } => {
                let scope = match scope_id {
                    Some(scope) => format!("with auth scope {scope:?}"),
                    None => "without a credential".to_owned(),
                };
                format!("allowed by rule {rule:?} in workspace {ws:?}: server {server:?} {scope}")
            }
            Decision::Deny {
                workspace_id: ws,
                rule_id: rule,
            } => {
                format!("denied by rule {rule:?} in workspace {ws:?}")
            }
            Decision::NoMatch { workspaces } if workspaces.is_empty() => {
                "denied: no workspace contains the client's directory".to_owned()
            }
            Decision::NoMatch { workspaces } => {
                let searched: Vec<String> = workspaces.iter().map(|w| format!("{w:?}")).collect();
                format!(
                    "denied: no route rule matches in workspaces {}",
                    searched.join(", ")
                )
            }
        }
    }
}

/// How specific a glob is; lower sorts first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Exact,
    Prefix,
    Other,
    Any,
}

/// Sort key of an entry within its workspace: (glob class, literal length,
/// priority), rule id, then config order (rule, glob), so the order is total.
type Key = ((Class, Reverse<usize>, Reverse<i32>), String, usize, usize);

/// One glob of one rule, with the decision the rule makes when it matches.
#[derive(Clone, Debug)]
struct Entry {
    matcher: GlobMatcher,
    /// For an allow rule, the only server whose tools it matches.
    allow_server: Option<String>,
    decision: Decision,
}

/// A usable workspace and its entries in evaluation order.
#[derive(Clone, Debug)]
struct Space {
    id: String,
    /// Absolute, `~` expanded, without `.` components or trailing slash.
    root: PathBuf,
    entries: Vec<Entry>,
}

/// The route rules of one [`RoutingConfig`], ready to decide calls.
///
/// Immutable once built; a query walks the prepared order and allocates only
/// its answer.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Most specific first (most root components, then id).
    spaces: Vec<Space>,
    problems: Vec<String>,
}

impl RouteTable {
    /// Builds the table from one configuration.
    ///
    /// `home` is the proxy user's home, to expand `~` roots; with `None` a `~`
    /// root is skipped and reported. The built-in workspace `default` (root
    /// `/`) is added when the configuration does not list it.
    pub fn new(config: &RoutingConfig, home: Option<&Path>) -> Self {
        let mut problems = Vec::new();
        let builtin = Workspace {
            id: DEFAULT_WORKSPACE.to_owned(),
            root_path: "/".to_owned(),
            ..Default::default()
        };
        let listed = config
            .workspaces
            .iter()
            .any(|ws| ws.id == DEFAULT_WORKSPACE);
        let mut spaces = Vec::new();
        for ws in config
            .workspaces
            .iter()
            .chain((!listed).then_some(&builtin))
        {
            match workspace_root(&ws.root_path, home) {
                Ok(root) => spaces.push(Space {
                    id: ws.id.clone(),
                    root,
                    entries: Vec::new(),
                }),
                Err(why) => problems.push(format!("workspace {:?} ignored: {why}", ws.id)),
            }
        }

        let mut keyed: Vec<Vec<(Key, Entry)>> = vec![Vec::new(); spaces.len()];
        for (index, rule) in config.routes.iter().enumerate() {
            let space = spaces.iter().position(|s| s.id == rule.workspace_id);
            let Some(list) = space.and_then(|space| keyed.get_mut(space)) else {
                problems.push(format!(
                    "rule {:?} ignored: its workspace {:?} is unknown or was ignored",
                    rule.id, rule.workspace_id
                ));
                continue;
            };
            match compile_rule(rule, index, &mut problems) {
                Ok(entries) => list.extend(entries),
                Err(why) => problems.push(format!("rule {:?} ignored: {why}", rule.id)),
            }
        }
        for (space, mut list) in spaces.iter_mut().zip(keyed) {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            space.entries = list.into_iter().map(|(_, entry)| entry).collect();
        }
        spaces.sort_by_key(|s| (Reverse(s.root.components().count()), s.id.clone()));
        RouteTable { spaces, problems }
    }

    /// Configuration problems found while building, one sentence each.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The workspace chain for a client's directory: the ids of every
    /// workspace whose root is a path-boundary ancestor of, or equal to,
    /// `cwd`, most specific first. `cwd` is used as given, and should be
    /// absolute and canonical; a relative `cwd` is in no workspace.
    pub fn workspaces(&self, cwd: &Path) -> Vec<&str> {
        self.chain(cwd).map(|space| space.id.as_str()).collect()
    }

    /// Decides a call of the exposed tool name `tool` (e.g.
    /// `github__create_issue`) that belongs to downstream server `server_id`,
    /// for a client in `cwd`. The order is described in the module doc.
    pub fn decide(&self, cwd: &Path, tool: &str, server_id: &str) -> Decision {
        for space in self.chain(cwd) {
            for entry in &space.entries {
                let for_other_server = entry
                    .allow_server
                    .as_deref()
                    .is_some_and(|s| s != server_id);
                if !for_other_server && entry.matcher.is_match(tool) {
                    return entry.decision.clone();
                }
            }
        }
        let workspaces = self.chain(cwd).map(|space| space.id.clone()).collect();
        Decision::NoMatch { workspaces }
    }

    /// The workspaces containing `cwd`, most specific first.
    fn chain<'a>(&'a self, cwd: &Path) -> impl Iterator<Item = &'a Space> {
        let absolute = cwd.is_absolute();
        self.spaces
            .iter()
            .filter(move |space| absolute && cwd.starts_with(&space.root))
    }
}

/// A workspace root made absolute and normal, or why it cannot be used.
fn workspace_root(raw: &str, home: Option<&Path>) -> Result<PathBuf, String> {
    let path = match raw.strip_prefix('~') {
        None => PathBuf::from(raw),
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {
            return Err(format!("root {raw:?}: only `~` and `~/...` are supported"));
        }
        Some(rest) => match home {
            Some(home) => home.join(rest.trim_start_matches('/')),
            None => {
                return Err(format!(
                    "root {raw:?} needs the user's home, which is unknown"
                ));
            }
        },
    };
    if !path.is_absolute() {
        return Err(format!("root {raw:?} is not absolute"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("root {raw:?} contains `..`"));
    }
    // Rebuilding from components drops `.`, repeated and trailing slashes.
    Ok(path.components().collect())
}

/// Compiles the globs of the `index`-th rule into keyed entries. An unknown
/// policy is read as deny and reported in `problems`.
fn compile_rule(
    rule: &RouteRule,
    index: usize,
    problems: &mut Vec<String>,
) -> Result<Vec<(Key, Entry)>, String> {
    let (workspace_id, rule_id) = (rule.workspace_id.clone(), rule.id.clone());
    let (policy, server_id) = (rule.policy.as_str(), rule.downstream_server_id.clone());
    if policy != "allow" && policy != "deny" {
        problems.push(format!(
            "rule {rule_id:?}: unknown policy {policy:?}, read as deny"
        ));
    }
    if rule.tool_match.is_empty() {
        return Err("it has no tool_match glob".to_owned());
    }
    let decision = if policy != "allow" {
        Decision::Deny {
            workspace_id,
            rule_id,
        }
    } else if server_id.is_empty() {
        return Err("an allow rule must name a downstream server".to_owned());
    } else {
        let scope_id = Some(rule.auth_scope_id.clone()).filter(|s| !s.is_empty());
        let server_id = server_id.clone();
        Decision::Allow {
            workspace_id,
            rule_id,
            server_id,
            scope_id,
        }
    };
    let allow_server = decision.is_allowed().then_some(server_id);
    let mut out = Vec::with_capacity(rule.tool_match.len());
    for (n, glob) in rule.tool_match.iter().enumerate() {
        let matcher = GlobBuilder::new(glob)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("tool_match {glob:?} is not a valid glob: {e}"))?
            .compile_matcher();
        let (class, len) = classify(glob);
        let rank = (class, Reverse(len), Reverse(rule.priority));
        let key = (rank, rule.id.clone(), index, n);
        let entry = Entry {
            matcher,
            allow_server: allow_server.clone(),
            decision: decision.clone(),
        };
        out.push((key, entry));
    }
    Ok(out)
}

/// The specificity class of a glob and the length in chars of its literal
/// prefix.
fn classify(glob: &str) -> (Class, usize) {
    let Some(at) = glob.find(GLOB_META) else {
        return (Class::Exact, glob.chars().count());
    };
    let (literal, rest) = glob.split_at(at);
    let class = match rest {
        _ if glob.chars().all(|c| c == '*') => Class::Any,
        "*" => Class::Prefix,
        _ => Class::Other,
    };
    (class, literal.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a scenario, one item a line: `nohome` (home is `/home/u` without
    /// it), `ws ID ROOT [DEFAULT_POLICY]`,
    /// `rule ID WS PRIORITY POLICY SERVER|- GLOB|GLOB|-` (scope `SERVER-s`),
    /// then checks `chain CWD WS,WS` and `call CWD TOOL OUTCOME`, the outcome
    /// `allow:RULE@WS`, `deny:RULE@WS` or `none:WS,WS`, for a tool of the
    /// server its namespace names. Returns the table.
    fn run(lines: &[&str]) -> RouteTable {
        let mut config = RoutingConfig::default();
        for f in lines.iter().map(|l| words(l)) {
            if f[0] == "ws" {
                let mut ws = Workspace::default();
                (ws.id, ws.root_path) = (f[1].into(), f[2].into());
                ws.default_policy = f.get(3).map_or("", |p| p).into();
                config.workspaces.push(ws);
            } else if f[0] == "rule" {
                let server = f[5].replace('-', "");
                let globs = f[6].split('|').filter(|g| *g != "-");
                config.routes.push(RouteRule {
                    id: f[1].into(),
                    workspace_id: f[2].into(),
                    priority: f[3].parse().unwrap(),
                    policy: f[4].into(),
                    auth_scope_id: format!("{server}-s"),
                    downstream_server_id: server,
                    tool_match: globs.map(String::from).collect(),
                    ..Default::default()
                });
            }
        }
        let home = Some(Path::new("/home/u")).filter(|_| !lines.contains(&"nohome"));
        let t = RouteTable::new(&config, home);
        for f in lines.iter().map(|l| words(l)) {
            let cwd = Path::new(f.get(1).unwrap_or(&""));
            let (got, want) = match f[0] {
                "chain" => (t.workspaces(cwd).join(","), f[2]),
                "call" => {
                    let server = split_tool(f[2]).map_or("", |s| s.0);
                    (outcome(t.decide(cwd, f[2], server)), f[3])
                }
                _ => continue,
            };
            assert_eq!(got, want, "{}", f.join(" "));
        }
        t
    }

    fn words(line: &str) -> Vec<&str> {
        line.split(' ').collect()
    }

    fn outcome(decision: Decision) -> String {
        match decision {
            Decision::Allow {
                workspace_id: w,
                rule_id: r,
                ..
            } => format!("allow:{r}@{w}"),
            Decision::Deny {
                workspace_id: w,
                rule_id: r,
            } => format!("deny:{r}@{w}"),
            Decision::NoMatch { workspaces } => format!("none:{}", workspaces.join(",")),
        }
    }

    #[test]
    fn glob_specificity_then_priority_then_id() {
        let t = run(&[
            "rule any default 100 allow gh *",
            "rule other default 50 allow gh gh__*_issue",
            "rule prefix default 10 allow gh gh__create*",
            "rule longer default 0 allow gh gh__create_i*",
            "rule exact default 0 allow gh gh__create_issue",
            "rule o-short default 9 allow oo o?__x",
            "rule o-long default 0 allow oo oo__?",
            "rule p-short default 0 allow pp pp__*",
            "rule o-longer default 9 allow pp pp__long_?",
            "rule b default 5 allow li li__*",
            "rule c default 7 allow li li__*",
            "rule z default 3 deny - no__*",
            "rule a default 3 allow no no__*",
            "rule wide default 0 deny - xx__delete|*",
            "rule glob default 0 allow ab ab__x*|ab__{a,b}",
            "rule del default 0 deny - li__del",
            "call / gh__create_issue allow:exact@default",
            "call / gh__create_issues allow:longer@default",
            "call / gh__create_an_issue allow:prefix@default",
            "call / gh__close_issue allow:other@default",
            "call / gh__list allow:any@default",
            "call / oo__x allow:o-long@default",
            "call / pp__long_x allow:p-short@default",
            "call / li__x allow:c@default",
            "call / no__x allow:a@default",
            // A rule ranks by the most specific of its globs that matches.
            "call / xx__delete deny:wide@default",
            "call / xx__list deny:wide@default",
            // Globs match the whole name, and `*` matches `/` too.
            "call / ab__x/y allow:glob@default",
            "call / ab__b allow:glob@default",
            "call / ab__c deny:wide@default",
            "call / li__del deny:del@default",
            "call / li__delete allow:c@default",
        ]);
        assert!(t.problems().is_empty(), "{:?}", t.problems());
        assert_eq!(classify("gh__**"), (Class::Other, 4));
        assert_eq!(classify("**"), (Class::Any, 0));
    }

    #[test]
    fn chain_walk_and_server_matching() {
        let t = run(&[
            "ws default /",
            "ws app /srv/app",
            "rule all-gh default 0 allow gh gh__create_issue",
            "rule li default 0 allow li li__*",
            "rule no-gh app 0 deny - gh__*",
            "rule app-li app 0 allow li li__list",
            "rule app-no app 9 allow no *",
            "rule no-del default 0 deny - *__delete*",
            "call /srv/app/src gh__create_issue deny:no-gh@app",
            "call /srv gh__create_issue allow:all-gh@default",
            "call /srv/app li__list allow:app-li@app",
            // Nothing in `app` for li__get (app-no is for server "no"): on to default.
            "call /srv/app li__get allow:li@default",
            "call /srv/app no__delete allow:app-no@app",
            // A deny rule without a server applies to every server's tools.
            "call /srv gh__delete deny:no-del@default",
            "call /srv no__delete deny:no-del@default",
            "call /srv no__get none:default",
        ]);
        let want = Decision::Allow {
            workspace_id: "default".into(),
            rule_id: "li".into(),
            server_id: "li".into(),
            scope_id: Some("li-s".into()),
        };
        assert_eq!(t.decide(Path::new("/srv/app"), "li__get", "li"), want);
    }

    #[test]
    fn workspace_roots_match_at_path_boundaries() {
        let t = run(&[
            "ws app /srv/app/",
            "ws srv /srv",
            "ws apple /srv/apple",
            "ws b /x/y",
            "ws a /x//y",
            "ws h ~",
            "ws p ~/proj/",
            "chain /srv/app/x app,srv,default",
            "chain /srv/app app,srv,default",
            "chain /srv/app/ app,srv,default",
            "chain /srv/apple apple,srv,default",
            "chain /srv/applesauce srv,default",
            "chain / default",
            "chain srv/app ",
            "chain /x/y/z a,b,default",
            "chain /home/u/proj/a p,h,default",
            "chain /home/user default",
        ]);
        assert!(t.problems().is_empty(), "{:?}", t.problems());

        let bad = ["ws rel srv", "ws user ~bob/x", "ws up /a/../b", "ws none "];
        let t = run(&bad);
        assert_eq!(t.problems().len(), 4, "{:?}", t.problems());
        let t = run(&[
            "nohome",
            "ws p ~/p",
            "rule r p 0 allow gh *",
            "chain /home/u/p default",
        ]);
        assert_eq!(t.problems().len(), 2, "{:?}", t.problems());
        assert!(t.problems()[0].contains("\"p\"") && t.problems()[0].contains("home"));
    }

    #[test]
    fn explain_and_no_match_whatever_the_default_policy() {
        let t = run(&[
            "ws app /srv/app allow",
            "ws default / allow",
            "rule r1 app 0 allow gh gh__*",
            "rule r2 app 0 deny - li__*",
            "call /srv/app/x no__list none:app,default",
        ]);
        let mut d = t.decide(Path::new("/srv/app"), "gh__x", "gh");
        let want = r#"allowed by rule "r1" in workspace "app": server "gh" with auth scope "gh-s""#;
        assert_eq!(d.explain(), want);
        if let Decision::Allow { scope_id, .. } = &mut d {
            *scope_id = None;
        }
        assert!(d.explain().ends_with("without a credential"));
        let d = t.decide(Path::new("/srv/app"), "li__x", "li");
        assert_eq!(d.explain(), r#"denied by rule "r2" in workspace "app""#);
        let d = t.decide(Path::new("/srv/app/x"), "no__list", "no");
        assert!(!d.is_allowed());
        let want = r#"denied: no route rule matches in workspaces "app", "default""#;
        assert_eq!(d.explain(), want);
        let d = t.decide(Path::new("relative"), "gh__list", "gh");
        assert_eq!(d, Decision::NoMatch { workspaces: vec![] });
        assert!(d.explain().contains("no workspace contains"));
    }

    #[test]
    fn config_problems_skip_rules_and_fail_closed() {
        let t = run(&[
            "rule bad-glob default 0 allow gh gh__[x",
            "rule lost nowhere 0 allow gh *",
            "rule no-server default 0 allow - *",
            "rule no-globs default 0 allow gh -",
            "rule odd default 0 Allow li li__*",
            "call / gh__x none:default",
            "call / li__x deny:odd@default",
        ]);
        assert_eq!(t.problems().len(), 5, "{:?}", t.problems());
        for id in ["bad-glob", "lost", "no-server", "no-globs", "odd"] {
            let found = t.problems().iter().any(|p| p.contains(id));
            assert!(found, "{id}: {:?}", t.problems());
        }
    }

    #[test]
    fn split_tool_edge_cases() {
        let gh = split_tool("github__create_issue");
        assert_eq!(gh, Some(("github", "create_issue")));
        assert_eq!(split_tool("a__b__c"), Some(("a", "b__c")));
        assert_eq!(split_tool("a___b"), Some(("a", "_b")));
        for name in ["__x", "x__", "__", "plain", ""] {
            assert_eq!(split_tool(name), None, "{name:?}");
        }
    }
}
